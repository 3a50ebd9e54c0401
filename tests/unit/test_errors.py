"""The one error vocabulary (gateway.errors): every class maps onto every transport."""

from __future__ import annotations

import inspect

import grpc
import pytest

import gateway.errors
from gateway.errors import ERROR_CLASSES, DialogError, error_table

# RFC 6455 section 7.4.1: these codes must never be sent in a Close frame.
RESERVED_WS_CODES = {1004, 1005, 1006, 1015}

IDS = [cls.__name__ for cls in ERROR_CLASSES]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=IDS)
def test_grpc_status_is_a_status_code_name(cls: type[DialogError]) -> None:
    assert cls.grpc_status in grpc.StatusCode.__members__
    assert cls.grpc_status != "OK"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=IDS)
def test_http_status_is_an_error_status(cls: type[DialogError]) -> None:
    assert isinstance(cls.http_status, int)
    assert 400 <= cls.http_status <= 599


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=IDS)
def test_ws_close_is_none_or_a_sendable_close_code(cls: type[DialogError]) -> None:
    if cls.ws_close is not None:
        assert 1000 <= cls.ws_close <= 4999
        assert cls.ws_close not in RESERVED_WS_CODES


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=IDS)
def test_to_json_shape(cls: type[DialogError]) -> None:
    err = cls("something went wrong")
    assert err.to_json() == {"error": {"code": cls.code, "message": "something went wrong"}}
    assert str(err) == "something went wrong"


def test_default_message_is_generic() -> None:
    assert DialogError().to_json() == {"error": {"code": "internal", "message": "internal error"}}


def test_retry_after_is_kept() -> None:
    err = gateway.errors.RateLimited("slow down", retry_after_s=1.5)
    assert err.retry_after_s == 1.5
    assert gateway.errors.InvalidMessage("x").retry_after_s is None


def test_every_error_class_is_listed() -> None:
    defined = {
        obj
        for _, obj in inspect.getmembers(gateway.errors, inspect.isclass)
        if issubclass(obj, DialogError) and obj is not DialogError
    }
    assert defined == set(ERROR_CLASSES)
    assert len(ERROR_CLASSES) == len(set(ERROR_CLASSES))


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in ERROR_CLASSES]
    assert len(codes) == len(set(codes))


def test_error_table_has_one_row_per_class() -> None:
    rows = error_table()
    assert len(rows) == len(ERROR_CLASSES)
    for row, cls in zip(rows, ERROR_CLASSES, strict=True):
        name, code, grpc_status, http_status, ws = row
        assert (name, code, grpc_status, http_status) == (
            cls.__name__,
            cls.code,
            cls.grpc_status,
            cls.http_status,
        )
        assert ws == ("error frame" if cls.ws_close is None else str(cls.ws_close))


def test_internal_is_the_generic_failure() -> None:
    cls = gateway.errors.Internal
    assert (cls.grpc_status, cls.http_status, cls.ws_close) == ("INTERNAL", 500, 1011)
