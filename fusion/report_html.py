"""report.html: the report's blocks (see `fusion.report_content`) as one self-contained HTML page, plots inside.

Every plot is embedded as a base64 PNG data URI and the style sheet is inline, so the file can be
mailed or attached on its own and opens offline. Text is escaped with the standard `html` module.
"""

import base64
import html
import re

from fusion.report_content import Alert, BulletList, Heading, Image, Paragraph, Table

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; line-height: 1.45;
       max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #1b1b1b; }
h1, h2 { line-height: 1.2; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f3f3; }
tbody tr:nth-child(even) { background: #fafafa; }
code { background: #f3f3f3; padding: 0 0.2rem; border-radius: 3px; }
.warning { border-left: 4px solid #c62828; background: #fdecea; padding: 0.5rem 0.8rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; } figcaption { color: #555; font-size: 0.9rem; }
"""
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text):
    """Escaped text with the blocks' two inline marks, **bold** and `code`, as HTML."""
    escaped = html.escape(text, quote=True)
    return _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<strong>\1</strong>", escaped))


def _block_html(block, images):
    if isinstance(block, Heading):
        return f"<h{block.level}>{_inline(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Alert):
        return f'<p class="warning"><strong>Warning:</strong> {_inline(block.text)}</p>'
    if isinstance(block, BulletList):
        return "<ul>\n" + "\n".join(f"<li>{_inline(item)}</li>" for item in block.items) + "\n</ul>"
    if isinstance(block, Table):
        header = "".join(f"<th>{_inline(cell)}</th>" for cell in block.header)
        rows = "\n".join("<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in row) + "</tr>" for row in block.rows)
        return f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    if isinstance(block, Image):
        if block.path not in images:
            raise ValueError(f"No PNG bytes for the plot {block.path!r}: pass images={{path: bytes}} for every plot "
                             f"of the report. Received: images for {sorted(images)}")
        data = base64.b64encode(images[block.path]).decode("ascii")
        title = html.escape(block.title, quote=True)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{title}">'
                f"<figcaption>{title}</figcaption></figure>")
    raise TypeError(f"No HTML for a {type(block).__name__} block. Received: {block!r}")


def render_html(blocks, images, title="Fusion report"):
    """The blocks as one self-contained HTML page: inline style, every plot a base64 PNG inside it.

    Args:
        blocks: the report's blocks, from `fusion.report_content.report_blocks`.
        images: dict plot path (as the `Image` blocks name it) -> its PNG bytes.
        title: the page title (default: "Fusion report").

    Example:
        >>> page = render_html(report_blocks(report), {"plots/model_comparison.png": png_bytes})
    """
    body = "\n".join(_block_html(block, images) for block in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
