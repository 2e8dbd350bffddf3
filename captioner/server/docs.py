"""The offline API docs: Swagger UI at /docs, served from a package rather than a CDN, and the
OpenAPI 3.0 rendering of the schema that its Swagger UI 4 needs.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .security_headers import inline_script_policy
from .settings import STATIC, TITLE

DOCS_OPENAPI_URL = "/docs/openapi-3.0.json"
# Above Swagger UI, in the same tab (a link in the API's description would open a new one); Swagger's own styles.
BACK_TO_PAGE = b'<body>\n<div class="swagger-ui"><div class="wrapper"><p class="info"><a class="link back-to-page" href="/">&larr; Back to the captioning page</a></p></div></div>'


def install_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package, not a CDN, so it works offline.

    That package bundles Swagger UI 4, which renders only OpenAPI 3.0: it reads a 3.0 rendering of
    the schema, while /openapi.json stays FastAPI's OpenAPI 3.1 for every other client.
    """
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get(DOCS_OPENAPI_URL, include_in_schema=False)
    def docs_schema() -> JSONResponse:
        return JSONResponse(openapi_3_0(app.openapi()))

    @app.get("/docs", include_in_schema=False)
    def docs():
        page = get_swagger_ui_html(
            openapi_url=DOCS_OPENAPI_URL, title=f"{TITLE} {__version__} \u2014 JSON API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg" if (STATIC / "favicon.svg").is_file() else "/docs-assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )
        page = HTMLResponse(page.body.replace(b"<body>", BACK_TO_PAGE, 1))
        page.headers["Content-Security-Policy"] = inline_script_policy(page.body)  # Swagger UI starts from an inline script
        return page


def openapi_3_0(document: dict) -> dict:
    """A copy of an OpenAPI 3.1 document in OpenAPI 3.0 terms, for Swagger UI 4.

    Only what 3.1 changed in schemas and FastAPI emits: `null` in anyOf/oneOf becomes `nullable`,
    `const` a one-value enum, an `examples` list `example`, numeric exclusive bounds the boolean form.
    """
    return {**_as_3_0(document), "openapi": "3.0.3"}


def _as_3_0(node):
    if isinstance(node, list):
        return [_as_3_0(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _as_3_0(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            del node[key]
            node["nullable"] = True
            if len(rest) == 1 and "$ref" not in rest[0]:
                node.update(rest[0])
            else:  # 3.0 ignores the siblings of a $ref, so wrap it
                node["allOf" if len(rest) == 1 else key] = rest
    if "const" in node and not isinstance(node["const"], dict):  # not a property named "const"
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("examples"), list) and node["examples"]:  # a schema's; 3.0's own examples are a map
        node["example"] = node.pop("examples")[0]
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(exclusive), (int, float)) and not isinstance(node[exclusive], bool):
            node[inclusive], node[exclusive] = node[exclusive], True
    return node
