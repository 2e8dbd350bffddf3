"""Gender-neutral captions: person words rewritten without gender, grammatically.

"a man and a woman" -> "two people", "a little girl" -> "a little child", "his" -> "their",
"she is" -> "they are". A captioner guesses gender from looks, and guesses wrong (Hendricks et al.
2018, "Women also Snowboard"); this rewrite says only what a photo shows. It works on a caption's
words (lower case, as the decoder writes them), before the sentence style is applied.
"""
from __future__ import annotations

from .word_forms import fix_articles

# Person words with a gender -> the word without it; singular and plural kept apart so the
# sentence stays grammatical ("men are" -> "people are").
NOUNS = {
    "man": "person", "woman": "person", "guy": "person", "lady": "person", "gentleman": "person",
    "men": "people", "women": "people", "guys": "people", "ladies": "people", "gentlemen": "people",
    "boy": "child", "girl": "child", "boys": "children", "girls": "children",
    "father": "parent", "mother": "parent", "dad": "parent", "mom": "parent", "mum": "parent",
    "fathers": "parents", "mothers": "parents", "dads": "parents", "moms": "parents",
    "son": "child", "daughter": "child", "sons": "children", "daughters": "children",
    "brother": "sibling", "sister": "sibling", "brothers": "siblings", "sisters": "siblings",
    "husband": "spouse", "wife": "spouse", "husbands": "spouses", "wives": "spouses",
    "boyfriend": "partner", "girlfriend": "partner", "boyfriends": "partners", "girlfriends": "partners",
    "grandfather": "grandparent", "grandmother": "grandparent", "grandpa": "grandparent", "grandma": "grandparent",
    "uncle": "relative", "aunt": "relative", "nephew": "relative", "niece": "relative",
    "king": "monarch", "queen": "monarch", "prince": "royal", "princess": "royal",
    "policeman": "police officer", "policewoman": "police officer", "policemen": "police officers", "policewomen": "police officers",
    "fireman": "firefighter", "firemen": "firefighters", "businessman": "businessperson", "businesswoman": "businessperson",
    "businessmen": "businesspeople", "businesswomen": "businesspeople", "fisherman": "fisher", "fishermen": "fishers",
    "workman": "worker", "workmen": "workers", "sportsman": "athlete", "sportswoman": "athlete",
    "cowboy": "rider", "cowboys": "riders", "cowgirl": "rider", "cowgirls": "riders",
    "waiter": "server", "waitress": "server", "waiters": "servers", "waitresses": "servers",
    "actress": "actor", "actresses": "actors", "bride": "newlywed", "groom": "newlywed",
    "schoolboy": "student", "schoolgirl": "student", "schoolboys": "students", "schoolgirls": "students",
}
GENDER_ADJECTIVES = {"male", "female"}  # dropped: "a female runner" -> "a runner"
SUBJECT_PRONOUNS = {"he", "she"}
OBJECT_PRONOUNS = {"him": "them", "himself": "themselves", "herself": "themselves", "hers": "theirs"}
POSSESSIVES = {"his": "their"}
# "her" is possessive before a noun ("her dog" -> "their dog") and an object elsewhere ("at her" -> "them")
OBJECT_FOLLOWERS = {
    "", "and", "or", "but", "as", "while", "with", "in", "on", "at", "to", "from", "by", "for", "of", "near", "into", "onto",
    "over", "under", "behind", "beside", "next", "up", "down", "out", "off", "away", "back", "a", "an", "the", "who", "that", "is", "are",
}
# he/she + verb: "she is" -> "they are"
AGREEING_VERBS = {"is": "are", "was": "were", "has": "have", "does": "do", "goes": "go", "isn't": "aren't", "wasn't": "weren't", "doesn't": "don't"}

MALE = frozenset({"man", "men", "guy", "guys", "gentleman", "gentlemen", "boy", "boys", "father", "fathers", "dad", "dads", "son", "sons",
                  "brother", "brothers", "husband", "husbands", "boyfriend", "boyfriends", "grandfather", "grandpa", "uncle", "nephew",
                  "king", "prince", "policeman", "policemen", "fireman", "firemen", "businessman", "businessmen", "fisherman", "fishermen",
                  "workman", "workmen", "sportsman", "cowboy", "cowboys", "waiter", "waiters", "groom", "schoolboy", "schoolboys",
                  "man's", "men's", "boy's", "boys'", "guy's"})
FEMALE = frozenset({"woman", "women", "lady", "ladies", "girl", "girls", "mother", "mothers", "mom", "moms", "mum", "daughter", "daughters",
                    "sister", "sisters", "wife", "wives", "girlfriend", "girlfriends", "grandmother", "grandma", "aunt", "niece", "queen",
                    "princess", "policewoman", "policewomen", "businesswoman", "businesswomen", "sportswoman", "cowgirl", "cowgirls",
                    "waitress", "waitresses", "actress", "actresses", "bride", "schoolgirl", "schoolgirls",
                    "woman's", "women's", "girl's", "girls'", "lady's"})


def gender_of(words: list[str]) -> str | None:
    """"male", "female", "mixed" or None (no gendered person noun) for a caption's words. Pronouns
    do not count: Flickr8k's captions call dogs "he" and "she" ("a dog carrying his toy")."""
    male, female = any(word in MALE for word in words), any(word in FEMALE for word in words)
    return "mixed" if male and female else "male" if male else "female" if female else None


def _noun(word: str) -> str | None:
    """The neutral form of a gendered person noun, possessives included ("woman's" -> "person's")."""
    if word in NOUNS:
        return NOUNS[word]
    for ending in ("'s", "'"):
        owner = NOUNS.get(word[: -len(ending)]) if word.endswith(ending) else None
        if owner is not None:
            return owner + ("'" if owner.endswith("s") else "'s")  # "girls'" -> "children's", "parents'"
    return None


def _verb_for_they(verb: str) -> str:
    """The plural verb after "they": "is" -> "are", "runs" -> "run", "carries" -> "carry", "watches" -> "watch"."""
    if verb in AGREEING_VERBS:
        return AGREEING_VERBS[verb]
    if verb.endswith("ies") and len(verb) > 4:
        return verb[:-3] + "y"
    if verb.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return verb[:-2]
    if verb.endswith("s") and not verb.endswith(("ss", "us", "is")) and len(verb) > 2:
        return verb[:-1]
    return verb


NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def _pairs_to_count(words: list[str]) -> list[str]:
    """"a person and a person" -> "two people", "a little child and a little child" -> "two little
    children", "two people and three people" -> "five people"."""
    plurals = {"person": "people", "child": "children"}
    for start in range(len(words)):
        if words[start] in NUMBERS and words[start + 1 : start + 3] in (["people", "and"], ["children", "and"]) and words[start + 4 : start + 5] == words[start + 1 : start + 2] and words[start + 3 : start + 4] and words[start + 3] in NUMBERS:
            total = NUMBERS.index(words[start]) + NUMBERS.index(words[start + 3])
            count = NUMBERS[total] if total < len(NUMBERS) else str(total)
            return words[:start] + [count, words[start + 1]] + _pairs_to_count(words[start + 5 :])
        if words[start] not in ("a", "an"):
            continue
        for length in (1, 2, 3):  # the noun phrase after the article: noun, or adjectives then noun
            phrase = words[start + 1 : start + 1 + length]
            after = start + 1 + length
            if len(phrase) == length and phrase[-1] in plurals and words[after : after + 2] in (["and", "a"], ["and", "an"]) and words[after + 2 : after + 2 + length] == phrase:
                return words[:start] + ["two", *phrase[:-1], plurals[phrase[-1]]] + _pairs_to_count(words[after + 2 + length :])
    return words


def neutral(text: str) -> str:
    """`text` with its person words written without gender; other words and their order unchanged."""
    body = text.rstrip(".!?")
    end = text[len(body):]  # a sentence's full stop stays where it was
    words = body.split()
    first_capital = bool(words) and words[0][:1].isupper()
    lowered = [word.lower() for word in words]
    result: list[str] = []
    changed = False
    for index, word in enumerate(lowered):
        following = lowered[index + 1] if index + 1 < len(lowered) else ""
        previous = result[-1] if result else ""
        if word in GENDER_ADJECTIVES:
            changed = True
            continue
        if word in SUBJECT_PRONOUNS:
            result.append("they")
        elif word == "her":
            result.append("them" if following.strip(".,!?") in OBJECT_FOLLOWERS else "their")
        elif word in OBJECT_PRONOUNS:
            result.append(OBJECT_PRONOUNS[word])
        elif word in POSSESSIVES:
            result.append(POSSESSIVES[word])
        elif previous == "they" and lowered[index - 1] in SUBJECT_PRONOUNS:
            result.append(_verb_for_they(word))
        elif (replacement := _noun(word)) is not None:
            result.extend(replacement.split())
        else:
            result.append(words[index])  # unchanged words keep their case
            continue
        changed = True
    if not changed:
        return text
    rewritten = fix_articles(_pairs_to_count(result))
    if first_capital and rewritten:
        rewritten[0] = rewritten[0][:1].upper() + rewritten[0][1:]
    return " ".join(rewritten) + end
