"""A tiny evaluator for the subset of Go's text/template that export/ollama.py emits, so tests can render an
Ollama TEMPLATE and compare it with the Hugging Face chat template's text.

Covers: text with `{{-`/`-}}` trimming, `range` (with `$i, $_ :=`), `if`/`else if`/`else`/`end`, variables
(`$x := ...`, `$x = ...`, `$`, `$.Field`), fields (`.Role`), string/int literals, parentheses and the functions
`eq ne and or not len slice`. Anything else raises, so a template outside the subset cannot pass by accident.
"""
from __future__ import annotations

import re

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\(|\)|:=|=|,|\$?[A-Za-z_0-9]*(?:\.[A-Za-z_]+)+|\$[A-Za-z_0-9]*|\.|-?\d+|[A-Za-z_]+)')


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with Go's whitespace trimming applied."""
    items: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        items.append(("text", text))
        items.append(("action", m.group(2).strip()))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    items.append(("text", tail.lstrip() if trim_next else tail))
    return items


def _parse(items, i=0, stop=("end",)):
    """Nodes up to a closing keyword: returns (nodes, index of the closing action, its text)."""
    nodes = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split(" ", 1)[0]
        if word in ("end", "else"):
            return nodes, i, body
        if word == "if":
            branches, else_body = [], []
            cond = body[3:]
            while True:
                inner, i, closing = _parse(items, i + 1)
                branches.append((cond, inner))
                if closing.startswith("else if "):
                    cond = closing[8:]
                    continue
                if closing == "else":
                    else_body, i, closing = _parse(items, i + 1)
                break
            nodes.append(("if", branches, else_body))
        elif word == "range":
            inner, i, _ = _parse(items, i + 1)
            nodes.append(("range", body[6:], inner))
        else:
            nodes.append(("action", body))
        i += 1
    return nodes, i, None


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or not m.group(1):
            raise ValueError(f"unsupported template expression: {expr!r}")
        out.append(m.group(1))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b, "not": lambda a: not a,
    "and": lambda *a: next((x for x in a if not x), a[-1]), "or": lambda *a: next((x for x in a if x), a[-1]),
    "len": len, "slice": lambda a, i=0, j=None: a[i:j],
}


class _Scope:
    def __init__(self, root):
        self.vars = {"$": root}

    def value(self, tok: str, dot):
        if tok.startswith('"'):
            return tok[1:-1].encode().decode("unicode_escape")
        if tok in ("true", "false"):
            return tok == "true"
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if tok == ".":
            return dot
        head, *fields = tok.split(".")
        obj = dot if head == "" else self.vars[head]
        for name in fields:
            obj = obj[name]
        return obj

    def call(self, toks: list[str], dot):
        args, i = [], 0
        while i < len(toks):
            if toks[i] == "(":
                depth, j = 1, i + 1
                while depth:
                    depth += {"(": 1, ")": -1}.get(toks[j], 0)
                    j += 1
                args.append(("value", self.call(toks[i + 1:j - 1], dot)))
                i = j
            else:
                args.append(("token", toks[i]))
                i += 1
        if args and args[0][0] == "token" and args[0][1] in FUNCS:
            return FUNCS[args[0][1]](*[a[1] if a[0] == "value" else self.value(a[1], dot) for a in args[1:]])
        if len(args) != 1:
            raise ValueError(f"unsupported template expression: {toks}")
        return args[0][1] if args[0][0] == "value" else self.value(args[0][1], dot)

    def run(self, nodes, dot, out: list[str]) -> None:
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "action":
                toks = _tokens(node[1])
                if len(toks) > 2 and toks[1] in (":=", "="):
                    self.vars[toks[0]] = self.call(toks[2:], dot)
                else:
                    value = self.call(toks, dot)
                    out.append("" if value is None else str(value))
            elif node[0] == "if":
                for cond, body in node[1]:
                    if self.call(_tokens(cond), dot):
                        self.run(body, dot, out)
                        break
                else:
                    self.run(node[2], dot, out)
            elif node[0] == "range":
                toks = _tokens(node[1])
                names = [t for t in toks[:toks.index(":=")] if t != ","] if ":=" in toks else []
                seq = self.call(toks[toks.index(":=") + 1:] if names else toks, dot)
                for index, item in enumerate(seq):
                    if names:
                        self.vars[names[0]] = index if len(names) == 2 else item
                        if len(names) == 2:
                            self.vars[names[1]] = item
                    self.run(node[2], item, out)


def render(template: str, messages: list[dict], system: str | None = None) -> str:
    """Render as Ollama does: `.Messages` (Role/Content), `.System` from the system message or the Modelfile's SYSTEM."""
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    if system and not any(m["Role"] == "system" for m in msgs):
        msgs.insert(0, {"Role": "system", "Content": system})
    root = {"Messages": msgs, "System": "\n\n".join(m["Content"] for m in msgs if m["Role"] == "system")}
    nodes, _, closing = _parse(_lex(template))
    if closing is not None:
        raise ValueError(f"unbalanced template: stray {{{{ {closing} }}}}")
    out: list[str] = []
    _Scope(root).run(nodes, root, out)
    return "".join(out)
