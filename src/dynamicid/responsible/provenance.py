"""Plain provenance metadata on every image the toolkit generates (issue 37 §2): the IPTC digital source type
`trainedAlgorithmicMedia` (or `compositeWithTrainedAlgorithmicMedia` for a picture drawn over a generated
one), the toolkit and its version, and the model's version, as an XMP packet: an `iTXt` chunk named
`XML:com.adobe.xmp` in a PNG, an APP1 segment in a JPEG. Any XMP reader (exiftool, photo managers) shows it
with no certificate. It names no person and embeds no reference photo.
"""

from __future__ import annotations

import os
import re
from typing import Any
from xml.sax.saxutils import escape, unescape

from dynamicid import __version__

IPTC_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATED = "trainedAlgorithmicMedia"
COMPOSITE = "compositeWithTrainedAlgorithmicMedia"
TOOLKIT = f"dynamicid {__version__}"
PNG_XMP_KEY = "XML:com.adobe.xmp"

_PACKET = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dynamicid="urn:dynamicid:xmp:1.0"
    Iptc4xmpExt:DigitalSourceType="{source_type}"
    xmp:CreatorTool="{toolkit}"
    dynamicid:ModelVersion="{model_version}"/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="r"?>"""


def xmp_packet(model_version: str | None, kind: str = GENERATED) -> str:
    """The XMP packet for one image; `kind` is GENERATED or COMPOSITE."""
    return _PACKET.format(
        source_type=IPTC_SOURCE_TYPES + kind,
        toolkit=escape(TOOLKIT, {'"': "&quot;"}),
        model_version=escape(model_version or "unknown", {'"': "&quot;"}),
    )


def save_with_provenance(image: Any, path: str, model_version: str | None, kind: str = GENERATED, **options) -> None:
    """`image.save(path)` (a PIL image; PNG or JPEG by the name) with the provenance XMP packet."""
    from PIL.PngImagePlugin import PngInfo

    packet = xmp_packet(model_version, kind)
    if os.path.splitext(path)[1].lower() == ".png":
        info = PngInfo()
        info.add_itxt(PNG_XMP_KEY, packet)
        info.add_text("Software", TOOLKIT)
        image.save(path, pnginfo=info, **options)
    else:
        image.save(path, xmp=packet.encode("utf-8"), **options)


def read_provenance(path: str) -> dict[str, str] | None:
    """The provenance fields of an image this toolkit wrote (None when it holds no such packet): source_type
    (the IPTC code's last part), creator_tool and model_version."""
    from PIL import Image

    with Image.open(path) as image:
        packet = image.info.get(PNG_XMP_KEY) or image.info.get("xmp")
    if isinstance(packet, bytes):
        packet = packet.decode("utf-8", "replace")
    if not packet or IPTC_SOURCE_TYPES not in packet:
        return None
    fields = {
        "source_type": r'Iptc4xmpExt:DigitalSourceType="[^"]*/([^"/]+)"',
        "creator_tool": r'xmp:CreatorTool="([^"]*)"',
        "model_version": r'dynamicid:ModelVersion="([^"]*)"',
    }
    found = {name: re.search(pattern, packet) for name, pattern in fields.items()}
    return {name: unescape(match.group(1), {"&quot;": '"'}) if match else "" for name, match in found.items()}
