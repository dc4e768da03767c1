"""book/notation.md lists every symbol of chapters 1-15 once (issue 21, item 6).

The symbols are read from the maths of the chapters' markdown and from the first column of the
tables of notation.md. A symbol is its letter (Latin or Greek, with a leading \\Delta) and its
named decorations, \\mathrm{...} or \\text{...} in a subscript or superscript (W_{\\mathrm{out}},
\\Delta W^{\\mathrm{sgd}}_i); index subscripts and superscripts (i, t, (p), \\ell) and primes are
not part of it. This is as far as a test can tell: it cannot see that one letter means two
things in two chapters when both are written the same way, so notation.md's rows are the
reference and the two lists below are explicit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(p for p in BOOK.glob("[0-9][0-9]_*.ipynb") if 1 <= int(p.name[:2]) <= 15)

GREEK = (r"\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|iota|kappa|lambda|mu|nu|"
         r"xi|pi|rho|sigma|tau|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Sigma|Phi|Psi|Omega)")
GROUP = r"\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"
SYMBOL = re.compile(rf"(?:\\Delta\s*)?(?:{GREEK}(?![a-zA-Z])|(?<![\\a-zA-Z])[A-Za-z](?![a-zA-Z]))'?"
                    rf"(?:\s*[_^]\s*(?:{GROUP}|\\?\w))*")
NAMED = re.compile(r"\\(?:mathrm|text|operatorname)\{(\w+)\}")
# Words in maths that are not symbols: operators and text (not a name in a sub- or superscript).
WORDS = re.compile(r"(?<![_^{])(?<![_^]\{)(?<![_^] )"
                   r"\\(?:mathrm|text|operatorname|mathbb|mathcal|mathbf|boldsymbol|left|right|big|Big)"
                   rf"(?:{GROUP})?")

# Rows of notation.md that may share a letter: one object and its parts, or an index family.
SAME_LETTER: dict[str, str] = {
    "A": "the contextual layer and its outputs A(x), A(C, x), A_i",
    "W": "the first MLP weight, the attention projections W_q..W_o and W_i, told apart by subscripts",
    "b": "the first MLP bias and the attention biases b_q..b_o, told apart by subscripts",
    "C": "the context, the prompt [C, x] and the part C \\ Y",
    "x": "the query, an example's input x_j and the query input x_q of the regression task",
    "y": "an example's label y_j, the query's label y_q and a prediction \\hat y",
    "z": "the tokens a layer reads, and those block l reads",
    "a": "the reference input a, its pseudo-inverse a^+ and the calibration inputs a_k",
    "\\Delta W": "the patch: of a part Y, after i tokens, of block l, of position p",
    "u": "the left factor of the patch, also per position",
    "v": "the right factor of the patch, and a vector in the norms table",
    "m": "the MLP input, at position t and of the query alone",
    "h": "the residual stream, at position t and of the query alone",
    "d": "the task's input dimension d and the head width d_h",
    "F": "a matrix F in the cosine and the norms tables",
    "L": "a loss L_i (L^ft with its name) and the number of blocks L: told apart by the index",
    "M": "the MLP M_W (always with its subscript W) and ch. 10's matrix M of the a_k",
    "T": "the prompt length T and the block T_W (always with its subscript W)",
    "\\Delta b'": "the output-bias shift, of block l and of position p",
    "o": "logit vectors o_prompt, o_patched (ch. 11) and a head's activation o^(l)_k (ch. 15), told apart by their names",
}

# Letters of chapters 1-10 that notation.md does not list, each local to one place and defined
# there, or not a symbol at all.
LOCAL: dict[str, str] = {
    "i": "an index", "j": "an index", "k": "an index", "l": "an index", "n": "a count or index",
    "t": "a position or scale, defined where used", "O": "big-O",
    "g": "a left factor or gradient factor in one proof or exercise (ch. 6), defined there",
    "U": "an orthonormal basis in one exercise, defined there",
    "\\Sigma": "a covariance, defined where used (an exercise of ch. 5; \\hat\\Sigma in ch. 9)",
    "\\gamma": "the rows of Gamma in one derivation (ch. 2), defined there",
    "\\beta": "a LayerNorm shift in one exercise, defined there",
    "\\epsilon": "a LayerNorm epsilon, defined where used",
    "\\pi": "the number pi",
    "\\rho": "a decay factor in one open question (ch. 5), defined there",
    "\\Omega": "big-Omega",
}


def math_spans(text: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in re.finditer(r"\$\$(.+?)\$\$|\$([^$\n]+)\$", text, re.DOTALL)]


def key(token: str) -> str:
    """The symbol a token writes: its letter and the names its sub- and superscripts consist of."""
    letter = re.match(rf"(?:\\Delta\s*)?(?:{GREEK}|[A-Za-z])", token).group().replace(" ", "")
    if letter.startswith("\\Delta") and len(letter) > len("\\Delta"):
        letter = "\\Delta " + letter.removeprefix("\\Delta")
    head = re.split(r"[_^]", token, maxsplit=1)[0]
    prime = "'" if letter.startswith("\\Delta") and "'" in head else ""
    scripts = re.findall(rf"[_^]\s*({GROUP}|\\?\w)", token)
    names = [NAMED.fullmatch(script[1:-1].strip() if script.startswith("{") else script)
             for script in scripts]
    return letter + prime + "".join(f"_{m.group(1)}" for m in names if m)


def symbols_in(span: str) -> set[str]:
    return {key(m.group()) for m in SYMBOL.finditer(WORDS.sub(" ", span))}


def top_level_items(span: str) -> list[str]:
    """``span`` split at the commas outside brackets, braces and angle brackets."""
    items, depth, start = [], 0, 0
    for match in re.finditer(r"\\langle|\\rangle|[(\[{]|[)\]}]|,", span):
        token = match.group()
        if token in ("\\langle", "(", "[", "{"):
            depth += 1
        elif token in ("\\rangle", ")", "]", "}"):
            depth -= 1
        elif depth == 0:
            items.append(span[start:match.start()])
            start = match.end()
    return items + [span[start:]]


def notation_rows() -> list[tuple[str, set[str]]]:
    """(first column, the symbols it defines) for every table row of notation.md."""
    rows = []
    for line in (BOOK / "notation.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("| $"):
            continue
        first = line.split("|")[1].strip()
        defined = set()
        for span in math_spans(first):
            # the leading symbol of each comma-separated item: "W_q, W_k" defines W_q and W_k
            for item in top_level_items(WORDS.sub(" ", span)):
                match = SYMBOL.search(item)
                if match:
                    defined.add(key(match.group()))
        rows.append((first, defined))
    return rows


def test_the_symbol_keys():
    assert symbols_in(r"\Delta W^{\mathrm{sgd}}_i = W_i - W") == {"\\Delta W_sgd", "W"}
    assert symbols_in(r"W_{\mathrm{out}}\, \mathrm{ReLU}(W z + b)") == {"W_out", "W", "z", "b"}
    assert symbols_in(r"\Delta b'^{(p)} + \lambda \eta") == {"\\Delta b'", "\\lambda", "\\eta"}


def test_notation_defines_each_symbol_once():
    rows: dict[str, list[str]] = {}
    for first, defined in notation_rows():
        for symbol in defined:
            rows.setdefault(symbol, []).append(first)
    twice = {s: r for s, r in rows.items() if len(r) > 1 and s not in SAME_LETTER}
    assert not twice, f"symbols that notation.md defines in more than one row: {twice}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_symbol_of_the_chapter_is_in_notation(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    used = set().union(*(symbols_in(span) for span in math_spans(text)))
    defined = set().union(*(d for _, d in notation_rows()))
    missing = sorted(s for s in used if s not in defined and s not in LOCAL)
    assert not missing, f"{path.name}: symbols that book/notation.md does not list: {missing}"
