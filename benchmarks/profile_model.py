"""Where a model's inference time goes: torch.profiler per component and per operator, fp32 and bf16.

    python benchmarks/profile_model.py                       # LViT at 224, batch 1
    python benchmarks/profile_model.py --model unet --size 224

Each component of the network (for LViT: CNN encoder, PLAM, CNN decoder, ViT branch, token-to-map
reconstruction, text projection, head) is wrapped in a ``torch.profiler.record_function`` range by forward
hooks on its modules; the ranges never nest, so their times add up, and what no range covers (additions,
concatenations between the blocks) is "other". The text front end and the resampling around the network
(input resize, output upsampling, as ``lvseg.load_model(...).predict`` does them) are profiled on their own.
Times are CPU means over ``--runs`` profiled forwards after warm-up. Appends the tables to RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, markdown_table

#: LViT's modules by component: (name pattern, component); the first pattern that matches a module names it.
LVIT_COMPONENTS = [
    (r"up\.\d+\.attention", "PLAM (pixel-level attention on the skips)"),
    (r"up\.\d+\.(convs|upsample)", "CNN decoder (upsample + convolutions)"),
    (r"(inc|down\.\d+)", "CNN encoder (convolutions + max-pool)"),
    (r"(embed|down_vit|up_vit|token_down|token_up)\.\d+", "ViT branch (patch embeddings, transformer blocks)"),
    (r"reconstruct\.\d+", "token-to-map reconstruction (upsampling convolutions)"),
    (r"(text_proj\.\d+|text_to_tokens)", "text projection (Conv1d pyramid, tokens)"),
    (r"head", "head (1x1 convolution)"),
]


def components_of(model: torch.nn.Module, patterns: list[tuple[str, str]] | None) -> dict[str, str]:
    """{module name: component} for modules that do not nest inside one another."""
    if patterns is None:  # any other model: its top-level children (the items of a list, named after it)
        chosen = {}
        for name, child in model.named_children():
            if name == "text_encoder":
                continue
            if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):  # containers are never called
                chosen.update({f"{name}.{item}": name for item, _ in child.named_children()})
            else:
                chosen[name] = name
        return chosen
    chosen: dict[str, str] = {}
    for name, _ in model.named_modules():
        if any(name.startswith(parent + ".") for parent in chosen):
            continue
        for pattern, component in patterns:
            if re.fullmatch(pattern, name):
                chosen[name] = component
                break
    return chosen


@contextlib.contextmanager
def labelled(model: torch.nn.Module, components: dict[str, str]):
    """Forward hooks that open a record_function range named after the component around each module."""
    handles, stack = [], []
    modules = dict(model.named_modules())
    for name, component in components.items():

        def enter(module, args, label=f"component: {component}"):
            scope = torch.profiler.record_function(label)
            scope.__enter__()
            stack.append(scope)

        def leave(module, args, output):
            stack.pop().__exit__(None, None, None)

        handles += [modules[name].register_forward_pre_hook(enter), modules[name].register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile(step, runs: int) -> torch.profiler.profile:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            with torch.profiler.record_function("total"):
                step()
    return prof


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lvit")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=10, help="profiled forwards per precision")
    parser.add_argument("--top", type=int, default=12, help="operators listed per precision")
    parser.add_argument("--input-side", type=int, default=512, help="side of the image resampled to --size")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    from lvseg.data.images import resize_image
    from lvseg.inference import upsample_probability
    from lvseg.inference.backends import cpu_has_bf16
    from lvseg.models import create_model, model_class

    torch.manual_seed(0)
    texts = list(model_class(args.model).example_reports[-1:])
    options = {"text_encoder": "learned"} if args.model in ("lvit", "reclmis") else {}
    model = create_model(args.model, img_size=args.size, texts=texts, **options).eval()
    images = torch.rand(1, 3, args.size, args.size)
    with torch.inference_mode():
        text_input = model.encode_text(texts)
    components = components_of(model, LVIT_COMPONENTS if args.model == "lvit" else None)

    precisions = [("fp32", contextlib.nullcontext, torch.contiguous_format)]
    if cpu_has_bf16():
        precisions.append(
            ("bf16 + channels-last", lambda: torch.autocast("cpu", dtype=torch.bfloat16), torch.channels_last)
        )
    component_rows: dict[str, dict[str, object]] = defaultdict(dict)
    op_tables = []
    for label, autocast, layout in precisions:
        model.to(memory_format=layout)
        batch = images.contiguous(memory_format=layout)

        def step() -> None:
            with torch.inference_mode(), autocast():
                model(batch, text_input)

        for _ in range(3):
            step()
        with labelled(model, components):
            prof = profile(step, args.runs)
        averages = {event.key: event for event in prof.key_averages()}
        total = averages["total"].cpu_time_total / args.runs / 1000
        covered = 0.0
        for component in dict.fromkeys(components.values()):
            event = averages.get(f"component: {component}")
            ms = event.cpu_time_total / args.runs / 1000 if event else 0.0
            covered += ms
            component_rows[component]["component"] = component
            component_rows[component][f"{label} ms"] = f"{ms:.1f}"
            component_rows[component][f"{label} %"] = f"{100 * ms / total:.0f}"
        for name, ms in (
            ("other (additions, concatenations, reshapes between blocks)", total - covered),
            ("network forward, total", total),
        ):
            component_rows[name].update(
                {"component": name, f"{label} ms": f"{ms:.1f}", f"{label} %": f"{100 * ms / total:.0f}"}
            )
        operators = sorted(
            (event for event in prof.key_averages() if not event.key.startswith(("component: ", "total"))),
            key=lambda event: event.self_cpu_time_total,
            reverse=True,
        )[: args.top]
        op_tables.append(
            (
                label,
                markdown_table(
                    [
                        {
                            "operator": f"`{event.key}`",
                            "calls per forward": f"{event.count / args.runs:g}",
                            "self ms per forward": f"{event.self_cpu_time_total / args.runs / 1000:.1f}",
                            "% of forward": f"{100 * event.self_cpu_time_total / args.runs / 1000 / total:.0f}",
                        }
                        for event in operators
                    ]
                ),
            )
        )
    model.to(memory_format=torch.contiguous_format)

    # Around the network: the text front end and the resampling that predict() does.
    side = args.input_side
    picture = torch.rand(3, side, side).numpy()
    probability = torch.rand(1, args.size, args.size)
    around = {
        "text front end (encode_text, one report)": lambda: model.encode_text(texts),
        f"input resize {side} -> {args.size} (bicubic, antialiased)": lambda: resize_image(picture, args.size),
        f"output upsampling {args.size} -> {side} (bilinear)": lambda: upsample_probability(probability, (side, side)),
    }
    around_rows = []
    for name, work in around.items():
        with torch.inference_mode():
            for _ in range(3):
                work()
            prof = profile(work, args.runs)
        ms = {event.key: event for event in prof.key_averages()}["total"].cpu_time_total / args.runs / 1000
        around_rows.append({"step": name, "fp32 ms": f"{ms:.1f}"})

    body = (
        f"{args.model} at {args.size} px, batch 1, random weights, eval mode, CPU; torch.profiler means over "
        f"{args.runs} forwards after 3 warm-ups, per precision (profiling adds a little time to every operator).\n\n"
        + markdown_table(list(component_rows.values()))
        + "\n\nAround the network (fp32):\n\n"
        + markdown_table(around_rows)
    )
    for label, table in op_tables:
        body += f"\n\nOperators by self time, {label}:\n\n{table}"
    print(body)
    if not args.no_record:
        append_section(f"Profile of {args.model} inference at {args.size} px", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
