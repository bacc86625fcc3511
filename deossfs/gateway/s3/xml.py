"""S3's XML documents: responses built with ElementTree, requests parsed with it.

Request documents are small (a CompleteMultipartUpload lists at most 10,000 parts, a
DeleteObjects at most 1,000 keys), read whole with a size cap first; expat (2.4.1 and
later, Debian 12 has 2.5) refuses entity-expansion bombs and ElementTree never loads
external entities.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...errors import InvalidInput

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
#: the largest XML request body taken (a Complete of 10,000 parts is ~1 MB)
MAX_REQUEST_XML = 4 * 1024 * 1024


class MalformedXML(InvalidInput):
    """An XML request body S3 would refuse as MalformedXML."""


@dataclass(frozen=True)
class Tagged:
    """An element's value with XML attributes: ("Grantee", Tagged({"xsi:type": ...}, [...]))."""

    attributes: dict[str, str]
    value: Any


def document(root: str, children: Iterable[Any] = (), namespace: bool = True,
             text: str | None = None) -> bytes:
    """`<root xmlns=...>children</root>` with the XML declaration, as S3 sends it.

    A child is (name, value): a str or number becomes text, a bool true/false, None is
    left out, a list of pairs (or a Mapping) becomes nested elements, a Tagged value has
    attributes too; a name given several times repeats the element. `text` is the root's
    own text (LocationConstraint)."""
    element = ET.Element(root, {"xmlns": NAMESPACE} if namespace else {})
    element.text = text
    _append(element, children)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(element, encoding="utf-8")


def _append(parent: ET.Element, children: Iterable[Any]) -> None:
    if isinstance(children, Mapping):
        children = children.items()
    for name, value in children:
        if value is None:
            continue
        child = ET.SubElement(parent, name)
        if isinstance(value, Tagged):
            child.attrib.update(value.attributes)
            value = value.value
        if isinstance(value, Mapping | list):
            _append(child, value)
        elif isinstance(value, bool):
            child.text = "true" if value else "false"
        else:
            child.text = str(value)


def timestamp(ns: int) -> str:
    """An ISO 8601 time as S3 writes it in XML: 2026-12-06T18:00:00.000Z."""
    moment = datetime.fromtimestamp(ns / 1e9, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def http_date(ns: int) -> str:
    """An HTTP date (Last-Modified): Sun, 06 Dec 2026 18:00:00 GMT."""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def parse(body: bytes, root: str) -> ET.Element:
    """Parse a request document whose root element is `root` (any namespace, or none)."""
    if len(body) > MAX_REQUEST_XML:
        raise MalformedXML(f"the XML body is larger than {MAX_REQUEST_XML} bytes")
    try:
        element = ET.fromstring(body)
    except ET.ParseError as exc:
        raise MalformedXML(f"The XML you provided was not well-formed: {exc}") from None
    if local_name(element.tag) != root:
        raise MalformedXML(f"the XML document is a {local_name(element.tag)}, not a {root}")
    return element


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if local_name(child.tag) == name]


def text(element: ET.Element, name: str, default: str | None = None) -> str | None:
    found = children(element, name)
    if not found:
        return default
    return found[0].text or ""
