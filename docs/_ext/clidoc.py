"""Reference pages generated from the code, so that they cannot drift from it.

* ``cli-help``: the ``--help`` text of one ``pyro-mmvae`` command (or of the program, with no
  argument), printed by the command line's own parser (:func:`pyro_mmvae.cli.build_parser`).
* ``settings-table``: one table per group of :mod:`pyro_mmvae.settings` — every ``--set`` key
  with its type, default and allowed values, read from the settings dataclasses, and its
  meaning (the field's ``help`` metadata where the library gives one, else the ``#:`` comment
  above the field, else :data:`MEANINGS`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive

#: What each setting means, for settings whose field carries no ``help`` metadata.
MEANINGS: dict[str, str] = {
    "latent_dim": "size of the shared latent z (Dz)",
    "private_dim": "size of each private latent w_m (Dw; MMVAE+ and its baseline)",
    "posterior": "family of the unimodal posteriors q_m(z|x_m) (and of MMVAE+'s priors)",
    "scale_param": "how an encoder's raw output becomes a scale: softplus(v) + 1e-6, or "
                   "softmax(v)·D + 1e-6 as in the official MMVAE/MMVAE+ code",
    "beta": "weight of the KL (prior-ratio) terms",
    "kl_warmup_epochs": "epochs over which β (and JMVAE's α) rises linearly from 0; 0: no "
                        "warm-up",
    "prior_expert": "include the prior p(z) as an expert of the products of experts",
    "num_subsets": "MVAE: number k of random subsets whose ELBOs are added each step",
    "subset_sampling": "MoPoE: one subset per data point (single) or one stratum per subset "
                       "(stratified)",
    "aux_prior": "MMVAE+: where the cross-modal w̃_d comes from — a learned-scale or fixed "
                 "auxiliary prior, or the target's own posterior (the baseline)",
    "alpha": "weight of the coordination terms KL(q(z|X) ‖ q_m) (JMVAE, MVTCAE)",
    "unimodal_targets": "coordination models: which modalities each q_m reconstructs — none, "
                        "its own (own) or every modality (all)",
    "decoder_stop_gradient": "coordination models: keep the unimodal-reconstruction gradients "
                             "out of the decoders",
    "incomplete_joint": "coordination models: the joint posterior of a row with a missing "
                        "modality — product of the present experts, or the joint encoder",
    "nets": "encoder/decoder architecture: MLP (any shape), PolyMNIST ResNet or small "
            "convolutional net (3×28×28 images)",
    "hidden": "widths of the MLP hidden layers, e.g. [256] or [400, 400]",
    "joint_features": "features per modality head of the joint encoder (JMVAE, TELBO)",
    "likelihood": "observation model p(x_m|z) of every modality",
    "likelihood_scale": "scale of the Laplace/Normal likelihoods",
    "modalities": "per-modality overrides {name: {key: value}} of likelihood, nets, "
                  "likelihood_scale, vocab_size (--set modalities.NAME.KEY=VALUE)",
    "num_particles": "K, latent samples per data point",
    "estimator": "ELBO, IWAE or DReG (IWAE and DReG need K > 1; the coordination objectives "
                 "use the ELBO)",
    "lr": "Adam learning rate",
    "amsgrad": "use the AMSGrad variant of Adam",
    "batch_size": "data points per optimiser step",
    "epochs": "passes over the training set",
    "stages": "parameter groups frozen per stage of training (TELBO; --stage on the command "
              "line)",
}

KINDS: dict[str, str] = {
    "positive_int": "int > 0", "non_negative_int": "int ≥ 0", "positive_float": "float > 0",
    "unit_float": "float in [0, 1]", "bool": "bool", "int_tuple": "list of int",
    "choice": "one of", "modalities": "dict", "any": "schedule",
}


def _parser_help(command: str | None) -> str:
    from pyro_mmvae.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "92"  # argparse wraps at the terminal width
    try:
        parser = build_parser()
        if command:
            subparsers = next(action for action in parser._actions
                              if action.__class__.__name__ == "_SubParsersAction")
            parser = subparsers.choices[command]
        return parser.format_help()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


class CliHelp(Directive):
    """``.. cli-help:: [COMMAND]``: the parser's help text as a literal block."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        text = _parser_help(self.arguments[0] if self.arguments else None)
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _value(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return str(value).replace("'", '"')


def _cell(*parts: nodes.Node | str) -> nodes.entry:
    paragraph = nodes.paragraph()
    for part in parts:
        paragraph += nodes.Text(part) if isinstance(part, str) else part
    entry = nodes.entry()
    entry += paragraph
    return entry


def _code(text: str) -> nodes.literal:
    return nodes.literal(text, text)


def _table(rows: list[list[nodes.entry]], header: list[str],
           widths: tuple[int, ...]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    row = nodes.row()
    for title in header:
        row += _cell(title)
    head += row
    body = nodes.tbody()
    group += body
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            row += cell
        body += row
    return table


def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment above each field of a dataclass body, joined into one line (what
    autodoc shows for the field; the library's one description of a setting)."""
    import ast
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, row = [], node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#:"):
                above.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            if above:
                comments[node.target.id] = " ".join(above)
    return comments


class SettingsTable(Directive):
    """``.. settings-table::``: every setting, one table per group (built as docutils nodes,
    so the directive works the same in Markdown and reStructuredText pages)."""

    def run(self) -> list[nodes.Node]:
        from pyro_mmvae import settings

        out: list[nodes.Node] = []
        for group, cls in settings.GROUPS.items():
            rows = []
            comments = field_comments(cls)
            for field in dataclasses.fields(cls):
                meta = dict(field.metadata)
                default = (field.default if field.default is not dataclasses.MISSING
                           else field.default_factory())  # type: ignore[misc]
                if meta.get("choices"):
                    kind: list[nodes.Node | str] = ["one of "]
                    for i, choice in enumerate(meta["choices"]):
                        kind += ([", "] if i else []) + [_code(str(choice))]
                else:
                    kind = [KINDS.get(meta.get("kind", ""), meta.get("kind", ""))]
                meaning = (meta.get("help") or comments.get(field.name)
                           or MEANINGS.get(field.name, ""))
                rows.append([_cell(_code(field.name)), _cell(*kind),
                             _cell(_code(_value(default))), _cell(meaning)])
            out.append(nodes.rubric(text=f"{group} settings"))
            out.append(_table(rows, ["key", "type", "default", "meaning"], (18, 18, 12, 52)))
        return out


def setup(app):
    app.add_directive("cli-help", CliHelp)
    app.add_directive("settings-table", SettingsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
