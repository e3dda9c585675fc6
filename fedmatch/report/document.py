"""The report document: the same content written as Markdown and as self-contained HTML."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from fedmatch.atomic import atomic_write_bytes
from fedmatch.report.runs import ReportError


def write_file(path: Path, data: bytes) -> None:
    """Write one report file atomically, or a ReportError naming it.

    The output folder may sit inside a copied, hostile runs folder: replacing the file (not
    writing through it) means a symbolic link planted there as ``report.md`` is replaced, never
    followed to overwrite what it points to.
    """
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise ReportError(f"{path}: cannot write the report file ({err.strerror or err})") from None


def md_text(text: str) -> str:
    """``text`` from a run directory as Markdown that shows it as written: no raw HTML, no
    link, and no line break that would end a table row or start a heading."""
    escaped = html.escape(str(text), quote=False).replace("[", "\\[").replace("]", "\\]")
    return re.sub(r"[\r\n]+", " ", escaped)


class Document:
    """The same content as Markdown and as HTML."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {md_text(text)}\n")
        self.html.append(f"<h{level}>{_inline(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{_inline(text)}</p>")

    def bullets(self, items: Sequence[str]) -> None:
        self.md.append("".join(f"- {md_text(item)}\n" for item in items))
        self.html.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        def md_cell(text: str) -> str:
            return md_text(text).replace("|", "\\|")

        lines = ["| " + " | ".join(md_cell(h) for h in header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
        self.md.append("\n".join(lines) + "\n")
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, path: Path, caption: str) -> None:
        self.md.append(f"![{caption}]({path.name})\n")
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def code(self, text: str, language: str = "") -> None:
        # A fence longer than any backtick run inside, so the text cannot close it.
        longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
        fence = "`" * (longest + 1)
        self.md.append(f"{fence}{language}\n{text}\n{fence}\n")
        self.html.append(f"<pre><code>{html.escape(text)}</code></pre>")

    def details(self, summary: str, blocks: Sequence[tuple[str, str]]) -> None:
        """A collapsible section (HTML) of (language, text) code blocks."""
        # Raw HTML in Markdown: escaped, on one line (a blank line would end the HTML block).
        one_line = re.sub(r"[\r\n]+", " ", html.escape(summary))
        self.md.append(f"<details><summary>{one_line}</summary>\n")
        self.html.append(f"<details><summary>{_inline(summary)}</summary>")
        for language, text in blocks:
            self.code(text, language)
        self.md.append("</details>\n")
        self.html.append("</details>")

    def write(self, title: str) -> tuple[Path, Path]:
        md_path, html_path = self.out_dir / "report.md", self.out_dir / "report.html"
        write_file(md_path, "\n".join(self.md).encode())
        page = (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(self.html)
            + "\n</body></html>\n"
        )
        write_file(html_path, page.encode())
        return md_path, html_path


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
    "pre{background:#f6f8fa;padding:0.8em;overflow-x:auto;font-size:0.85em}"
    "figure{display:inline-block;margin:0.5em}figcaption{font-size:0.85em;color:#555}"
    "code{background:#f6f8fa;padding:0 3px}"
)


def _inline(text: str) -> str:
    """Markdown `code` spans to HTML, everything else escaped."""
    parts = re.split(r"`([^`]*)`", text)
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )
