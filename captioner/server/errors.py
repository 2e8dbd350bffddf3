"""The API's errors: `ApiError`, raised for anything a client caused or can retry, and the handlers
that answer every error, FastAPI's and unexpected ones included, as {"error": {"code", "message"}}.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import schemas

logger = logging.getLogger("captioner.server")


class ApiError(Exception):
    """An error a client caused or can retry; rendered as {"error": {"code", "message"}}."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = schemas.ErrorResponse(error=schemas.ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(422, "invalid_request", str(error.errors()[0].get("msg", "invalid request")) + ".")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error_response(error.status_code, codes.get(error.status_code, "http_error"), str(error.detail), error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)  # never the body
        return _error_response(500, "internal_error", "Something went wrong on the server; please try again.")
