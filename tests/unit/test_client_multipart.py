"""The multipart encoding of baedal.client (parts concatenated, lengths in the
``x-multipart`` header): a round trip keeps the parts, and splitting never fails on
headers that some other client wrote (it falls back to one part)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from baedal.client.links import MULTIPART_HEADER, join_multipart, split_multipart

parts = st.lists(st.binary(max_size=64), max_size=8)


@given(parts)
def test_multipart_round_trip_keeps_every_part(frames: list[bytes]) -> None:
    body, headers = join_multipart(frames)
    assert body == b"".join(frames)
    assert split_multipart(body, headers) == frames


@given(st.binary(max_size=64))
def test_single_part_carries_no_header(data: bytes) -> None:
    body, headers = join_multipart(data)
    assert (body, headers) == (data, None)
    assert split_multipart(body, headers) == [data]


header_values = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.lists(st.one_of(st.integers(min_value=-5, max_value=70), st.text(max_size=2), st.none()), max_size=6),
)


@given(st.binary(max_size=64), header_values)
def test_split_falls_back_to_one_part_on_foreign_headers(body: bytes, value: Any) -> None:
    result = split_multipart(body, {MULTIPART_HEADER: value})
    assert b"".join(result) == body
    lengths_ok = (
        isinstance(value, list)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value)
        and sum(value) == len(body)
    )
    if not lengths_ok:
        assert result == [body]
