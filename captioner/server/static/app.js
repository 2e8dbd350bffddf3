// Captioner page: choose, drop or paste a photo; POST it to /api/captions; show the captions
// with how sure the model is, in words. Plain JavaScript, no build step, nothing fetched from
// anywhere but this server.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const elements = {
    dropzone: $("dropzone"), empty: $("dropzone-empty"), choose: $("choose"), chooseAnother: $("choose-another"),
    file: $("file"), figure: $("preview-figure"), preview: $("preview"), previewBusy: $("preview-busy"),
    photoActions: $("photo-actions"), photoMeta: $("photo-meta"), hint: $("upload-hint"), modelName: $("model-name"),
    options: $("options"), optionsSummary: $("options-summary"), beamSize: $("beam-size"), numCaptions: $("num-captions"),
    result: $("result"), heading: $("result-heading"), progress: $("progress"), placeholder: $("placeholder"),
    error: $("error"), errorTitle: $("error-title"), errorMessage: $("error-message"),
    answer: $("answer"), caption: $("caption"), tags: $("tags"), copy: $("copy"), copyLabel: $("copy-label"),
    confidenceWords: $("confidence-words"), confidenceDetail: $("confidence-detail"), bestBar: $("best-bar"), bestScore: $("best-score"),
    alternativesBlock: $("alternatives-block"), alternatives: $("alternatives"), timing: $("timing"), status: $("status"),
    suggestion: $("suggestion"), suggestionText: $("suggestion-text"), copySuggestion: $("copy-suggestion"), copySuggestionLabel: $("copy-suggestion-label"),
    copyTags: $("copy-tags"), copyTagsLabel: $("copy-tags-label"), examplesBlock: $("examples-block"), examples: $("examples"),
    wordMaps: $("word-maps"), wordList: $("word-list"), wordMap: $("word-map"),
  };

  // Server errors caused by the file itself: the photo is dropped, so nothing re-sends it.
  const FILE_ERRORS = new Set(["upload_too_large", "unsupported_image", "unsupported_media_type", "invalid_image", "image_too_large", "missing_image"]);
  const FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF";
  const SETTLE_MS = 350; // options send one request once the user stops changing them

  // How sure the model is: each caption's `confidence` from the server (the probability that it is
  // acceptable alt text, calibrated with the model), put into words by the bands of the model's
  // calibration (/api/model `confidence_bands`). Only the words for each level live here.
  const LEVEL_WORDS = {
    "fairly-sure": { signal: 4, words: "Fairly sure" },
    "somewhat-sure": { signal: 3, words: "Somewhat sure" },
    unsure: { signal: 2, words: "Unsure \u2014 check this caption" },
    guess: { signal: 1, words: "A guess \u2014 probably wrong" },
  };
  const NO_CONFIDENCE = { level: "none", signal: 0, words: "No confidence for this model",
    detail: "This model was not calibrated, so there is no telling how likely its captions are to be right: check them." };
  // One fixed scale for every score bar (the best caption and the alternatives): the range the
  // scores spanned on those 380 photos, so equal scores draw equal bars and a gap shows as a gap.
  const SCALE = { low: -2.0, high: -0.4 };

  let limits = {
    max_upload_bytes: 10 * 1024 * 1024,
    beam_size: { minimum: 1, maximum: 10, default: 3 },
    num_captions: { minimum: 1, maximum: 5, default: 1 },
  };
  let confidenceBands = null; // from the model's calibration, surest first; null: captions come without a confidence
  let currentFile = null; // the photo on show and being captioned; null after an error about the file
  let previewUrl = null;
  let inFlight = null; // AbortController of the request being answered
  let optionsTimer = 0;
  let copyTimer = 0;
  let attentionMaps = false; // whether the model can show where each word looked (/api/model)
  let wordMapsRequest = null; // AbortController of the request for the word maps
  let chosenCaption = null; // the alternative chosen to copy instead of the best caption; null: the best

  // ---- set-up ----

  function fillSelect(select, range) {
    select.replaceChildren();
    for (let value = range.minimum; value <= range.maximum; value += 1) {
      select.append(new Option(String(value), String(value), value === range.default, value === range.default));
    }
  }

  function megabytes(bytes) {
    const value = bytes / (1024 * 1024);
    return `${value >= 10 ? Math.round(value) : value.toFixed(1).replace(/\.0$/, "")} MB`;
  }

  function fileSize(bytes) {
    return bytes < 1024 * 1024 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : megabytes(bytes);
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return response.json();
  }

  async function loadSettings() {
    try {
      limits = await getJson("/api/limits");
    } catch (error) {
      // keep the defaults above; the server still enforces its own limits
    }
    fillSelect(elements.beamSize, limits.beam_size);
    fillSelect(elements.numCaptions, limits.num_captions);
    summariseOptions();
    elements.hint.textContent = `${FORMATS}, up to ${megabytes(limits.max_upload_bytes)}`;
    try {
      const model = await getJson("/api/model");
      confidenceBands = model.confidence_bands || null;
      attentionMaps = Boolean(model.attention_maps);
      elements.modelName.textContent = `Model: ${model.name}`;
      elements.modelName.title = `${model.encoder} encoder, ${model.decoder.kind} decoder, ${model.vocabulary_size.toLocaleString()} words`;
    } catch (error) {
      elements.modelName.textContent = "";
    }
  }

  // ---- showing state ----

  function show(part) {
    // part: "placeholder" | "progress" | "error" | "answer"
    for (const name of ["placeholder", "progress", "error", "answer"]) elements[name].hidden = name !== part;
    const busy = part === "progress";
    elements.result.setAttribute("aria-busy", String(busy));
    elements.previewBusy.hidden = !busy;
    // an error has its own title; "Caption" above it would promise one (screen readers keep the heading)
    elements.heading.classList.toggle("visually-hidden", part === "error");
  }

  function showError(title, message) {
    elements.errorTitle.textContent = title;
    elements.errorMessage.textContent = message;
    show("error");
    elements.status.textContent = `${title}. ${message}`;
  }

  function quoted(file) {
    return file.name ? `\u201c${file.name}\u201d` : "the pasted image";
  }

  // The server writes captions as sentences ("A cat on a bed.", captioner.caption_style), as the CLI
  // and the Python API do; only an empty caption needs words here.
  function sentence(text) {
    return text.trim() || "(no caption)";
  }

  function formatScore(score) {
    return score.toFixed(2).replace("-", "\u2212");
  }

  function showPhoto(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    const hadFocus = elements.empty.contains(document.activeElement);
    elements.figure.classList.remove("no-preview");
    elements.preview.alt = `Your photo, ${file.name || "from the clipboard"}, being captioned`;
    elements.preview.src = previewUrl;
    elements.figure.hidden = false;
    elements.empty.hidden = true;
    elements.dropzone.dataset.state = "photo";
    elements.photoActions.hidden = false;
    elements.photoMeta.textContent = `${file.name || "Pasted image"} \u00b7 ${fileSize(file.size)}`;
    if (hadFocus) elements.chooseAnother.focus(); // the button that had focus is now hidden
  }

  function clearPhoto() {
    // back to the empty drop zone: no old preview, name or pending request outlives a new choice
    clearTimeout(optionsTimer);
    if (inFlight) inFlight.abort();
    inFlight = null;
    currentFile = null;
    clearWordMaps();
    const hadFocus = elements.photoActions.contains(document.activeElement);
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    elements.preview.removeAttribute("src");
    elements.preview.alt = "";
    elements.figure.classList.remove("no-preview");
    elements.figure.hidden = true;
    elements.empty.hidden = false;
    elements.dropzone.dataset.state = "empty";
    elements.photoActions.hidden = true;
    elements.photoMeta.textContent = "";
    if (hadFocus) elements.choose.focus(); // the button that had focus is now hidden
  }

  function percent(score) {
    return `${Math.round(score * 100)}%`;
  }

  function showTags(tags) {
    // the photo's visual concepts as chips under the caption, most probable first
    elements.tags.replaceChildren(...tags.map((tag) => {
      const item = document.createElement("li");
      item.className = "tag";
      item.title = `${tag.word}: ${percent(tag.score)} likely`;
      const word = document.createElement("span");
      word.className = "tag-word";
      word.textContent = tag.word;
      const score = document.createElement("span");
      score.className = "tag-score";
      score.textContent = percent(tag.score);
      item.append(word, score);
      return item;
    }));
    elements.tags.hidden = tags.length === 0;
  }

  // ---- confidence ----

  function confidence(caption) {
    // {level, signal, words, detail} of a caption, from its confidence and the model's bands
    const value = caption.confidence;
    if (typeof value !== "number" || !confidenceBands) return NO_CONFIDENCE;
    const band = confidenceBands.find((entry) => value >= entry.minimum) || confidenceBands[confidenceBands.length - 1];
    const tenths = Math.round(value * 10);
    const likely = `about ${tenths} in 10 captions this sure name the photo\u2019s subject and say nothing false`;
    const detail = band.level === "guess" ? `Probably wrong: only ${likely}. Use the suggestion from the tags instead.`
      : `${likely[0].toUpperCase()}${likely.slice(1)}.`;
    return { level: band.level, ...LEVEL_WORDS[band.level], detail, percent: Math.round(value * 100) };
  }

  function fillBar(bar, caption) {
    const share = (caption.score - SCALE.low) / (SCALE.high - SCALE.low);
    bar.dataset.confidence = confidence(caption).level;
    bar.firstElementChild.style.width = `${(Math.min(1, Math.max(0, share)) * 100).toFixed(1)}%`;
  }

  function showConfidence(caption) {
    const band = confidence(caption);
    elements.answer.dataset.confidence = band.level; // the caption's type follows it (style.css)
    elements.answer.dataset.signal = String(band.signal);
    elements.confidenceWords.textContent = band.words;
    elements.confidenceDetail.textContent = band.detail;
    const sure = band.percent === undefined ? "" : `Confidence ${band.percent}% \u00b7 `;
    elements.bestScore.textContent = `${sure}score ${formatScore(caption.score)} \u00b7 average log-probability per word; nearer 0 is surer`;
    fillBar(elements.bestBar, caption);
    return band;
  }

  function showSuggestion(band, body) {
    // A guess: the tags that name things as the alt text to use, copied with their own (primary)
    // button, while "Copy caption" steps back (style.css) and the preview's alt stays neutral.
    const guess = band.level === "guess";
    elements.suggestion.hidden = !guess;
    elements.copy.classList.toggle("button-quiet", guess);
    elements.suggestionText.textContent = body.tags_alt_text || "No tag names a thing in this photo: describe it yourself.";
    elements.copySuggestion.hidden = !body.tags_alt_text;
    elements.copySuggestionLabel.textContent = "Copy suggestion";
    return guess ? body.tags_alt_text : null;
  }

  function alternative(caption) {
    const item = document.createElement("li");
    const choice = document.createElement("button");
    choice.type = "button";
    choice.className = "alternative-choice";
    choice.setAttribute("aria-pressed", "false");
    choice.dataset.text = sentence(caption.text);
    choice.addEventListener("click", () => chooseAlternative(choice));
    const words = document.createElement("span");
    words.className = "alternative-text";
    words.textContent = sentence(caption.text);
    const score = document.createElement("span");
    score.className = "alternative-score";
    score.textContent = formatScore(caption.score);
    score.setAttribute("aria-label", `score ${formatScore(caption.score)}, ${confidence(caption).words.toLowerCase()}`);
    const bar = document.createElement("span");
    bar.className = "score-bar";
    bar.setAttribute("aria-hidden", "true");
    bar.append(document.createElement("span"));
    fillBar(bar, caption);
    choice.append(words, score, bar);
    item.append(choice);
    return item;
  }

  function showAnswer(body) {
    const [best, ...others] = body.captions;
    const text = sentence(best.text);
    const tags = body.tags || [];
    elements.caption.textContent = text;
    const band = showConfidence(best);
    const suggestion = showSuggestion(band, body);
    elements.preview.alt = band.level === "guess" ? "Your photo" : text; // never a guess as the photo's description
    showTags(tags);
    elements.alternatives.replaceChildren(...others.map(alternative));
    elements.alternativesBlock.hidden = others.length === 0;
    chosenCaption = null;
    showCopyTags(tags);
    const { width, height } = body.image;
    elements.timing.textContent = `${width.toLocaleString()} \u00d7 ${height.toLocaleString()} px \u00b7 captioned in ${Math.round(body.timing_ms.total)} ms`;
    resetCopyButton();
    show("answer");
    elements.status.textContent = `Caption: ${text} ${band.words}, score ${formatScore(best.score)}.`
      + (suggestion ? ` Suggested alt text: ${suggestion}` : "")
      + (tags.length ? ` Visual concepts: ${tags.map((tag) => tag.word).join(", ")}.` : "");
    const box = elements.caption.getBoundingClientRect();
    if (box.top > window.innerHeight || box.bottom < 0) {
      // a tall photo on a small screen can still push the caption down: bring it into view
      const calm = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      elements.caption.scrollIntoView({ block: "center", behavior: calm ? "auto" : "smooth" });
    }
  }

  // ---- captioning ----

  function checkFile(file) {
    // [title, what to do]: the title names the file and the problem, the body only the way out
    if (file.type && !file.type.startsWith("image/")) {
      return [`${quoted(file)} is not an image`, `Choose a ${FORMATS} photo.`];
    }
    if (file.size > limits.max_upload_bytes) {
      return [`${quoted(file)} is too large (${megabytes(file.size)})`,
        `The limit is ${megabytes(limits.max_upload_bytes)}: try a smaller or more compressed copy.`];
    }
    if (file.size === 0) return [`${quoted(file)} is empty`, "Choose a photo that has something in it."];
    return null;
  }

  function handleFile(file) {
    if (!file) return;
    const problem = checkFile(file);
    if (problem) {
      clearPhoto();
      showError(...problem);
      return;
    }
    clearTimeout(optionsTimer);
    currentFile = file;
    showPhoto(file);
    caption();
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function caption() {
    if (!currentFile) return;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const file = currentFile;
    show("progress");
    clearWordMaps();
    elements.status.textContent = "Captioning your photo\u2026";
    const form = new FormData();
    form.append("image", file, file.name || "pasted-image");
    form.append("beam_size", elements.beamSize.value);
    form.append("num_captions", elements.numCaptions.value);
    try {
      let response;
      for (let attempt = 0; ; attempt += 1) {
        response = await fetch("/api/captions", { method: "POST", body: form, signal: controller.signal });
        if (response.status !== 503 || attempt >= 2) break;
        await sleep(1000 * (attempt + 1)); // a busy server: wait a moment and try again
      }
      const body = await response.json().catch(() => null);
      if (controller !== inFlight) return;
      if (response.ok && body && body.captions && body.captions.length) {
        showAnswer(body);
        showWordMapsFor(file);
        return;
      }
      const error = (body && body.error) || { code: "", message: `The server answered ${response.status}; try again in a moment.` };
      if (FILE_ERRORS.has(error.code)) clearPhoto(); // re-sending it would fail the same way
      showError(`Could not caption ${quoted(file)}`, error.message);
    } catch (error) {
      if (error.name === "AbortError") return;
      showError("Could not reach the server", "Check that the captioner is still running, then try again.");
    } finally {
      if (controller === inFlight) inFlight = null;
    }
  }

  // ---- options ----

  function summariseOptions() {
    const count = Number(elements.numCaptions.value);
    elements.optionsSummary.textContent = `width ${elements.beamSize.value} \u00b7 ${count} caption${count === 1 ? "" : "s"}`;
  }

  function optionsChanged(event) {
    const beam = Number(elements.beamSize.value);
    const count = Number(elements.numCaptions.value);
    if (count > beam) {
      // keep the pair valid: the beam must hold at least as many captions as asked for
      if (event.target === elements.numCaptions) elements.beamSize.value = String(count);
      else elements.numCaptions.value = String(beam);
    }
    summariseOptions();
    // arrow keys change a select one step at a time: caption once the user settles
    clearTimeout(optionsTimer);
    if (currentFile) optionsTimer = setTimeout(caption, SETTLE_MS);
  }

  // ---- copy ----

  function resetCopyButton() {
    clearTimeout(copyTimer);
    for (const button of [elements.copy, elements.copySuggestion, elements.copyTags]) button.classList.remove("is-done");
    elements.copyLabel.textContent = chosenCaption ? "Copy chosen caption" : "Copy caption";
    elements.copySuggestionLabel.textContent = "Copy suggestion";
    elements.copyTagsLabel.textContent = "Copy tags";
  }

  async function copyText(text, button, label, what) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (error) {
      // not a secure context (e.g. a LAN address): fall back to a selection copy
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
      button.focus();
    }
    resetCopyButton();
    button.classList.add("is-done");
    label.textContent = "Copied";
    elements.status.textContent = `${what} copied to the clipboard.`;
    copyTimer = setTimeout(resetCopyButton, 2000);
  }

  const copyCaption = () => copyText(chosenCaption || elements.caption.textContent, elements.copy, elements.copyLabel, chosenCaption ? "Chosen caption" : "Caption");
  const copySuggestion = () => copyText(elements.suggestionText.textContent, elements.copySuggestion, elements.copySuggestionLabel, "Suggested alt text");

  // ---- choosing, dropping and pasting ----

  const openPicker = () => elements.file.click();
  elements.choose.addEventListener("click", openPicker);
  elements.chooseAnother.addEventListener("click", openPicker);
  elements.empty.addEventListener("click", (event) => { if (event.target === elements.empty) openPicker(); });
  elements.file.addEventListener("change", () => {
    handleFile(elements.file.files[0]);
    elements.file.value = ""; // choosing the same file again still fires "change"
  });

  let dragDepth = 0;
  const carriesFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    elements.dropzone.classList.add("is-dragging");
  });
  window.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault(); // the whole window is a drop target, so a miss never opens the file
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) elements.dropzone.classList.remove("is-dragging");
  });
  window.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    elements.dropzone.classList.remove("is-dragging");
    handleFile(event.dataTransfer.files[0]);
  });

  document.addEventListener("paste", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
    const item = items.find((entry) => entry.kind === "file" && entry.type.startsWith("image/")) || items.find((entry) => entry.kind === "file");
    if (!item) return;
    event.preventDefault();
    handleFile(item.getAsFile());
  });

  elements.preview.addEventListener("error", () => {
    // e.g. TIFF, which browsers cannot show: keep captioning, show the file name instead
    if (elements.preview.src) elements.figure.classList.add("no-preview");
  });
  elements.preview.addEventListener("load", () => elements.figure.classList.remove("no-preview"));

  elements.beamSize.addEventListener("change", optionsChanged);
  elements.numCaptions.addEventListener("change", optionsChanged);
  elements.options.addEventListener("submit", (event) => { event.preventDefault(); caption(); });
  elements.copy.addEventListener("click", copyCaption);
  elements.copySuggestion.addEventListener("click", copySuggestion);

  // ---- choosing an alternative; copying the tags ----

  function chooseAlternative(choice) {
    // a second press gives the best caption back; the chosen one is what "Copy" copies
    const choosing = choice.getAttribute("aria-pressed") !== "true";
    for (const other of elements.alternatives.querySelectorAll(".alternative-choice")) other.setAttribute("aria-pressed", "false");
    choice.setAttribute("aria-pressed", String(choosing));
    chosenCaption = choosing ? choice.dataset.text : null;
    elements.answer.classList.toggle("has-chosen", choosing);
    resetCopyButton();
    elements.status.textContent = choosing ? `Chosen to copy: ${chosenCaption}` : "The best caption is the one to copy again.";
  }

  function showCopyTags(tags) {
    elements.copyTags.hidden = tags.length === 0;
    elements.copyTags.dataset.text = tags.map((tag) => tag.word).join(", ");
  }

  const copyTags = () => copyText(elements.copyTags.dataset.text, elements.copyTags, elements.copyTagsLabel, "Tags");

  elements.copyTags.addEventListener("click", copyTags);

  // ---- example photos: clicking one captions it as if it were uploaded ----

  async function captionExample(example) {
    try {
      const response = await fetch(example.url);
      if (!response.ok) throw new Error(`${example.url}: ${response.status}`);
      const blob = await response.blob();
      handleFile(new File([blob], example.name, { type: blob.type || "image/jpeg" }));
    } catch (error) {
      showError(`Could not load the example \u201c${example.name}\u201d`, "Check that the captioner is still running, then try again.");
    }
  }

  function exampleButton(example) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.setAttribute("aria-label", `Caption the example photo ${example.name}`);
    const picture = document.createElement("img");
    picture.src = example.url;
    picture.alt = "";
    picture.loading = "lazy";
    button.append(picture);
    button.addEventListener("click", () => captionExample(example));
    item.append(button);
    return item;
  }

  async function loadExamples() {
    try {
      const examples = await getJson("/api/examples");
      elements.examples.replaceChildren(...examples.map(exampleButton));
      elements.examplesBlock.hidden = examples.length === 0;
    } catch (error) {
      elements.examplesBlock.hidden = true; // the page works without them
    }
  }

  // ---- where each word looked: POST /api/explain, drawn on a canvas over the preview ----

  // A dark-to-bright colour map (as "inferno"); a cell's opacity follows its weight too.
  const HEAT = [[40, 11, 84], [159, 42, 99], [245, 125, 21], [252, 255, 164]];

  function heat(value) {
    const position = Math.min(1, Math.max(0, value)) * (HEAT.length - 1);
    const low = Math.floor(position);
    const high = Math.min(HEAT.length - 1, low + 1);
    const mix = position - low;
    return HEAT[low].map((channel, index) => Math.round(channel + (HEAT[high][index] - channel) * mix));
  }

  function drawWordMap(grid) {
    // one pixel per grid cell; CSS stretches the canvas over the photo and the browser smooths it
    const rows = grid.length;
    const columns = grid[0].length;
    const canvas = elements.wordMap;
    canvas.width = columns;
    canvas.height = rows;
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(columns, rows);
    const peak = Math.max(...grid.flat()) || 1;
    grid.flat().forEach((value, index) => {
      const share = value / peak;
      pixels.data.set([...heat(share), Math.round(40 + 175 * share)], index * 4);
    });
    context.putImageData(pixels, 0, 0);
    canvas.hidden = false;
  }

  function clearWordMaps() {
    if (wordMapsRequest) wordMapsRequest.abort();
    wordMapsRequest = null;
    elements.wordMaps.hidden = true;
    elements.wordList.replaceChildren();
    elements.wordMap.hidden = true;
  }

  function showWord(button, word) {
    for (const other of elements.wordList.querySelectorAll(".word")) other.setAttribute("aria-pressed", String(other === button));
    drawWordMap(word.map);
  }

  function hideWord() {
    for (const other of elements.wordList.querySelectorAll(".word")) other.setAttribute("aria-pressed", "false");
    elements.wordMap.hidden = true;
  }

  function wordButton(word) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
    button.textContent = word.word;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("pointerenter", () => showWord(button, word));
    button.addEventListener("pointerleave", (event) => { if (event.pointerType === "mouse") hideWord(); });
    button.addEventListener("focus", () => showWord(button, word));
    button.addEventListener("blur", hideWord);
    button.addEventListener("click", () => showWord(button, word)); // a tap on a touch screen
    item.append(button);
    return item;
  }

  async function showWordMapsFor(file) {
    if (!attentionMaps) return;
    const controller = new AbortController();
    wordMapsRequest = controller;
    const form = new FormData();
    form.append("image", file, file.name || "pasted-image");
    form.append("beam_size", elements.beamSize.value);
    try {
      const response = await fetch("/api/explain", { method: "POST", body: form, signal: controller.signal });
      const body = await response.json();
      if (controller !== wordMapsRequest || !response.ok || !body.words || !body.words.length) return;
      elements.wordList.replaceChildren(...body.words.map(wordButton));
      elements.wordMaps.hidden = false;
    } catch (error) {
      // the maps are an extra: the caption stands without them
    } finally {
      if (controller === wordMapsRequest) wordMapsRequest = null;
    }
  }

  loadSettings();
  loadExamples();
})();
