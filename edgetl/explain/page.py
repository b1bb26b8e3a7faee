"""The report page: one HTML document, images beside it, no network and no JavaScript needed."""

from __future__ import annotations

import html
from typing import Any


def _img(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}" width="160" height="160">'


def page(doc: dict[str, Any]) -> str:
    e = html.escape
    looks, changed, int8 = doc["where_the_model_looks"], doc["what_finetuning_changed"], doc["what_int8_changed"]
    rows = []
    for im in looks["images"]:
        top = "<br>".join(f"{e(c)} {100 * p:.1f}%" for c, p in im["top"])
        verdict = "wrong" if im["wrong"] else ("right" if im["true"] is not None else "")
        rows.append(f'<tr class="{verdict}"><td>{e(im["name"])}</td><td>{e(im["true"] or "-")}</td><td>{top}</td>'
                    f'<td>{_img(im["crop"], "input crop")}</td><td>{_img(im["cam"], "class-activation map")}</td></tr>')
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgetl explain: {e(doc['run'])}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
        "tr.wrong td{background:#fde8e8}img{image-rendering:pixelated}</style></head><body>",
        f"<h1>edgetl explain: {e(doc['run'])}</h1>",
        f"<p>Model {e(doc['model'])}, {len(doc['classes'])} classes, data {e(doc['data'])}; maps: {e(doc['method'])} "
        f"at <code>{e(looks['target_layer'])}</code>, for the predicted class, over the centre crop the model saw.</p>",
        "<h2>1. Where the model looks</h2>",
        "<table><tr><th>image</th><th>true</th><th>predicted (top-k)</th><th>input</th><th>map</th></tr>",
        *rows, "</table>",
        "<h2>2. What fine-tuning changed</h2>",
        f"<p>Strategy <b>{e(changed['strategy'])}</b> from weights <b>{e(changed['weights'])}</b>; validation top-1 "
        f"{changed['top1']:.2f}%.</p>",
    ]
    if changed["stages"]:
        parts += ['<p><img src="weight_change.png" alt="relative weight change per stage"></p>']
    parts += [f"<p>{e(changed['summary'])}</p>", '<p><img src="confusion.png" alt="confusion matrix"></p>']
    if changed["most_confused"]:
        parts += ["<table><tr><th>true</th><th>predicted</th><th>images</th><th>example</th><th>map</th></tr>"]
        parts += [f"<tr><td>{e(c['true'])}</td><td>{e(c['predicted'])}</td><td>{c['count']}</td>"
                  f"<td>{_img(c['crop'], 'example')}</td><td>{_img(c['cam'], 'map')}</td></tr>"
                  for c in changed["most_confused"]]
        parts += ["</table>"]
    parts += ["<h2>3. What INT8 changed</h2>"]
    if int8 is None:
        parts += ["<p>No INT8 artifact: run <code>edgetl export RUN --int8</code> or pass <code>--artifact</code>.</p>"]
    else:
        parts += [f"<p><code>{e(int8['artifact'])}</code>: {int8['flips']} of {int8['images']} validation images "
                  f"change their top-1 against best.pt; {int8['fixed']} become right and {int8['broken']} become "
                  f"wrong, a net {int8['delta_top1']:+.2f} points. The accuracy figure alone hides the "
                  f"{int8['flips'] - abs(int8['fixed'] - int8['broken'])} flips that cancel out.</p>"]
        if int8["flipped"]:
            parts += ["<table><tr><th>image</th><th>true</th><th>best.pt</th><th>INT8</th><th>input</th>"
                      "<th>map (best.pt)</th></tr>"]
            parts += [f"<tr><td>validation image {f['index']}</td><td>{e(f['true'])}</td><td>{e(f['fp32'])}</td>"
                      f"<td>{e(f['int8'])}</td><td>{_img(f['crop'], 'input')}</td><td>{_img(f['cam'], 'map')}</td></tr>"
                      for f in int8["flipped"]]
            parts += ["</table>"]
        if int8["guard_float_layers"]:
            parts += ['<p>Layers the accuracy guard kept in float, by sensitivity:</p>',
                      '<p><img src="sensitivity.png" alt="guard sensitivity per layer"></p>']
        else:
            parts += ["<p>The accuracy guard kept no layer in float: INT8 was within its --max-drop budget.</p>"]
    parts += ["</body></html>", ""]
    return "\n".join(parts)
