"""report.md: the report's blocks (see `fusion.report_content`) as Markdown."""

from fusion.report_content import Alert, BulletList, Heading, Image, Paragraph, Table


def _block_lines(block):
    if isinstance(block, Heading):
        return ["#" * block.level + " " + block.text]
    if isinstance(block, Paragraph):
        return [block.text]
    if isinstance(block, Alert):
        return [f"> **Warning:** {block.text}"]
    if isinstance(block, BulletList):
        return [f"- {item}" for item in block.items]
    if isinstance(block, Table):
        return (["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
                + ["| " + " | ".join(row) + " |" for row in block.rows])
    if isinstance(block, Image):
        return [f"![{block.title}]({block.path})"]
    raise TypeError(f"No Markdown for a {type(block).__name__} block. Received: {block!r}")


def render_markdown(blocks):
    """The blocks as Markdown, each followed by a blank line.

    Args:
        blocks: the report's blocks, from `fusion.report_content.report_blocks`.

    Example:
        >>> render_markdown([Heading("Fusion report", level=1), Paragraph("**fusion** wins.")])
        '# Fusion report\\n\\n**fusion** wins.\\n'
    """
    lines = []
    for block in blocks:
        lines += _block_lines(block) + [""]
    return "\n".join(lines)
