"""Turn a GGUF model into the Hugging Face safetensors folder vLLM serves (run with the vLLM venv's Python).

    python .ci/convert_gguf.py MODEL.gguf OUT_DIR

transformers dequantizes the GGUF (it needs `gguf` and `accelerate`); the quantizer it attaches is dropped
before saving, so the folder holds plain weights, config, tokenizer and chat template. The folder is written
beside OUT_DIR and renamed into place, with `source.json` naming the GGUF (path, size, mtime); a folder whose
`source.json` matches is left alone, so a second run costs nothing. Hub access stays off (HF_HUB_OFFLINE=1):
everything comes from the file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _source(gguf: Path) -> dict[str, object]:
    stat = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def convert(gguf: Path, out: Path) -> bool:
    """Write the folder; False when an up-to-date one is already there."""
    marker = out / "source.json"
    source = _source(gguf)
    try:
        if json.loads(marker.read_text()) == source:
            return False
    except (OSError, ValueError):
        pass
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        fix = "run this with the vLLM venv's Python, or `pip install transformers gguf accelerate`"
        raise SystemExit(f"{exc}: {fix}") from exc
    hf_logging.disable_progress_bar()

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    model.hf_quantizer = None  # the weights are dequantized; vLLM must not look for a GGUF quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".", suffix=".partial"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(source))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    gguf, out = Path(argv[0]), Path(argv[1])
    if not gguf.is_file():
        print(f"{gguf}: no such GGUF file", file=sys.stderr)
        return 2
    made = convert(gguf, out)
    print(f"{out}: {'converted from' if made else 'already converted from'} {gguf}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
