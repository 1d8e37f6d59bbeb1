"""Checks every gRPC request gets before a servicer sees it, and bounded quoting for messages.

Some bad input is bad for every RPC alike, whatever its field means: a NUL byte in a string
(PostgreSQL's text refuses it, so it used to surface as INTERNAL deep in a query), a string
so long that no id, e-mail or reason could be it (a 1 MB "id" echoed into an error overflowed
gRPC's metadata limit), or a Timestamp outside the years 1 to 9999 (ToDatetime raises). One
walk over the decoded message refuses those for all RPCs at once, naming the field by its path
(`settings.currency`, `erp_customer_ids[3]`); each servicer then checks what its fields mean.
Bytes fields (CSV chunks) are left to the RPC that parses them.

Pure: no I/O, no gRPC; the server's interceptor calls `request_problem`.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import ValidationError

#: Longest string any request field may carry. Ids, e-mails, reasons, URLs and page tokens are
#: all far shorter; anything longer is refused before a servicer or the database sees it.
MAX_STRING_CHARS = 16 * 1024
#: How much of a caller's value an error message quotes.
QUOTE_CHARS = 40
#: Longest message text an error carries (it travels in a trailer, which gRPC limits to 8 KiB
#: for all metadata together by default).
MAX_MESSAGE_CHARS = 400


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """`value` as repr, cut to `limit` characters with its full length said when cut."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message` cut to `limit` characters: an error never carries a caller's large value back."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


def string_problem(value: str) -> str | None:
    """Why `value` cannot be any request string, or None."""
    if "\x00" in value:
        return "contains a NUL byte (\\x00): remove it"
    if len(value) > MAX_STRING_CHARS:
        return f"is {len(value)} characters long; at most {MAX_STRING_CHARS} are accepted"
    return None


TIMESTAMP = "google.protobuf.Timestamp"
#: google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)


def timestamp_in_range(stamp: Any) -> bool:
    """Whether a Timestamp converts to a datetime (outside its range, ToDatetime raises)."""
    return bool(_TIMESTAMP_SECONDS[0] <= stamp.seconds <= _TIMESTAMP_SECONDS[1] and 0 <= stamp.nanos <= 999_999_999)


def request_problem(message: Message, prefix: str = "") -> ValidationError | None:
    """The first field of `message` (recursively) that no RPC could accept, as a ValidationError."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_STRING:
            items = list(enumerate(value)) if repeated else [(None, value)]
            for index, text in items:
                problem = string_problem(text)
                if problem:
                    return ValidationError(path if index is None else f"{path}[{index}]", problem)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.full_name == TIMESTAMP:
                for index, stamp in list(enumerate(value)) if repeated else [(None, value)]:
                    if not timestamp_in_range(stamp):
                        return ValidationError(
                            path if index is None else f"{path}[{index}]",
                            "is not a valid timestamp (years 0001 to 9999, nanos 0 to 999999999)",
                        )
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key in value:
                    entry = value[key]
                    for part, text in (("key", key), ("value", entry)):
                        if isinstance(text, str) and (problem := string_problem(text)):
                            return ValidationError(f"{path}.{part}", problem)
                    if isinstance(entry, Message) and (found := request_problem(entry, f"{path}[{key!r}].")):
                        return found
                continue
            children = list(enumerate(value)) if repeated else [(None, value)]
            for index, child in children:
                found = request_problem(child, f"{path}." if index is None else f"{path}[{index}].")
                if found:
                    return found
    return None
