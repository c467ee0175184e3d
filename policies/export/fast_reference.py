"""A Python reference for FAST action tokens, written from the published algorithm
(Pertsch et al. 2025) with scipy and Hugging Face `tokenizers`, used to cross-check
and benchmark reflex's Rust codec.

    fast_reference.py fit --chunks chunks.json --horizon T --dim D --out DIR [--scale 10 --vocab-size 1024]
    fast_reference.py check --tokenizer DIR --chunks chunks.json     # ids and decoded chunks as JSON
    fast_reference.py ids --tokenizer DIR --ids ids.json               # decode given id lists
    fast_reference.py bench --tokenizer DIR --ids ids.json --repeat N  # median decode time, us
    fast_reference.py generate --prefix P.onnx --step S.onnx --end E --joints J --repeat N
        # median time of a greedy autoregressive loop (prefix + steps) with onnxruntime

Chunks are JSON lists of row-major [T][D] float lists. Arithmetic is float64.
"""

import argparse
import json
import os
import time

import numpy as np
import scipy.fft
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


class Fast:
    def __init__(self, tokenizer: Tokenizer, scale: float, min_token: int, horizon: int, dim: int):
        self.tokenizer, self.scale, self.min_token, self.horizon, self.dim = tokenizer, scale, min_token, horizon, dim

    @classmethod
    def load(cls, path: str) -> "Fast":
        config = json.load(open(os.path.join(path, "processor_config.json")))
        return cls(Tokenizer.from_file(os.path.join(path, "tokenizer.json")), config["scale"], config["min_token"],
                   config["time_horizon"], config["action_dim"])

    def quantize(self, chunk: np.ndarray) -> np.ndarray:
        coefficients = scipy.fft.dct(np.asarray(chunk, np.float64), axis=0, norm="ortho")
        return np.around(coefficients * self.scale).astype(np.int64).flatten()

    def text(self, chunk) -> str:
        return "".join(map(chr, np.maximum(self.quantize(chunk) - self.min_token, 0)))

    def encode(self, chunk) -> list[int]:
        return self.tokenizer.encode(self.text(chunk), add_special_tokens=False).ids

    def decode(self, ids) -> np.ndarray | None:
        """The chunk, or None when the ids do not give exactly T x D coefficients."""
        values = [ord(c) + self.min_token for c in self.tokenizer.decode(ids, skip_special_tokens=False)]
        if len(values) != self.horizon * self.dim:
            return None
        coefficients = np.array(values, np.float64).reshape(self.horizon, self.dim) / self.scale
        return scipy.fft.idct(coefficients, axis=0, norm="ortho")


def fit(chunks, horizon, dim, scale, vocab_size) -> Fast:
    quantized = [np.around(scipy.fft.dct(np.asarray(c, np.float64), axis=0, norm="ortho") * scale).astype(np.int64)
                 for c in chunks]
    min_token = int(min(q.min() for q in quantized))
    span = int(max(q.max() for q in quantized)) - min_token
    assert span + 1 <= vocab_size, f"coefficients span {span + 1} values > vocab_size {vocab_size}"
    texts = ["".join(map(chr, q.flatten() - min_token)) for q in quantized]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = sorted(set(pre_tokenizers.ByteLevel.alphabet()) | {chr(i) for i in range(span + 1)})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, initial_alphabet=alphabet,
                                  max_token_length=10000, show_progress=False, special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return Fast(tokenizer, scale, min_token, horizon, dim)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit")
    p.add_argument("--chunks", required=True)
    p.add_argument("--horizon", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--scale", type=float, default=10.0)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--out", required=True)
    p = sub.add_parser("generate")
    p.add_argument("--prefix", required=True)
    p.add_argument("--step", required=True)
    p.add_argument("--end", type=int, required=True)
    p.add_argument("--joints", type=int, required=True)
    p.add_argument("--repeat", type=int, default=200)
    for name in ("check", "ids", "bench"):
        p = sub.add_parser(name)
        p.add_argument("--tokenizer", required=True)
        p.add_argument("--chunks")
        p.add_argument("--ids")
        p.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    if args.command == "fit":
        fast = fit(json.load(open(args.chunks)), args.horizon, args.dim, args.scale, args.vocab_size)
        os.makedirs(args.out, exist_ok=True)
        fast.tokenizer.save(os.path.join(args.out, "tokenizer.json"))
        json.dump({"scale": fast.scale, "min_token": fast.min_token, "vocab_size": args.vocab_size,
                   "time_horizon": fast.horizon, "action_dim": fast.dim,
                   "processor_class": "UniversalActionProcessor"}, open(os.path.join(args.out, "processor_config.json"), "w"),
                  indent=2)
        return
    if args.command == "generate":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        prefix = ort.InferenceSession(args.prefix, options, providers=["CPUExecutionProvider"])
        step = ort.InferenceSession(args.step, options, providers=["CPUExecutionProvider"])
        cache_names = [o.name[len("present."):] for o in prefix.get_outputs() if o.name.startswith("present.")]
        state = np.zeros((1, args.joints), np.float32)
        times, tokens = [], 0
        for _ in range(args.repeat):
            start = time.perf_counter()
            outputs = dict(zip([o.name for o in prefix.get_outputs()], prefix.run(None, {"state": state})))
            ids = []
            while (token := int(outputs["logits"].argmax())) != args.end and len(ids) < 256:
                ids.append(token)
                feeds = {"input_ids": np.array([[token]], np.int64)}
                feeds.update({f"past.{n}": outputs[f"present.{n}"] for n in cache_names})
                outputs = dict(zip([o.name for o in step.get_outputs()], step.run(None, feeds)))
            times.append(time.perf_counter() - start)
            tokens = len(ids)
        print(json.dumps({"median_us": float(np.median(times) * 1e6), "tokens": tokens}))
        return
    fast = Fast.load(args.tokenizer)
    if args.command == "check":
        out = []
        for chunk in json.load(open(args.chunks)):
            ids = fast.encode(chunk)
            decoded = fast.decode(ids)
            out.append({"ids": ids, "decoded": None if decoded is None else decoded.tolist()})
        print(json.dumps(out))
    elif args.command == "ids":
        out = [None if (d := fast.decode(ids)) is None else d.tolist() for ids in json.load(open(args.ids))]
        print(json.dumps(out))
    else:  # bench
        ids = json.load(open(args.ids))
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fast.decode(ids)
            times.append(time.perf_counter() - start)
        print(json.dumps({"median_us": float(np.median(times) * 1e6)}))


if __name__ == "__main__":
    main()
