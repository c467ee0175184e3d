"""Build the FAST policy for the simulated reaching task (launch/sim_arm_fast.toml).

The prefix graph is the trained reaching network (policies/models/sim_reach.onnx)
followed by the FAST encoder written as ONNX ops: quantile normalization, the
orthonormal DCT-II as a matrix product, x scale, Round (half to even, like
np.around), - min_token, clip, and the byte-level token of each coefficient. It
keeps the token plan in its cache (`present.tokens`, `present.pos`); the decoder
step graph emits the planned tokens one per step and then the end token.

What this is: a FAST-token policy whose tokens come from a behaviour-cloned
regression network through an exact in-graph FAST encoder (a tokenizer without BPE
merges, one token per coefficient). What it is not: a token-level trained
transformer. It exercises the whole runtime path of an autoregressive VLA
(prefix, cached decoding, end token, FAST decode, unnormalization) with a model
that completes the task.
"""

import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import scipy.fft
from onnx import helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from fast_reference import Fast
from onnx_graph import const, save, tensor

HORIZON, JOINTS, SCALE = 10, 3, 20.0
Q01, Q99 = -2.8, 2.8
MIN_TOKEN = -64  # coefficients of normalized [10, 3] chunks lie within +-sqrt(10) * 20 = +-63


def byte_level_table():
    """GPT-2's byte -> character map used by byte-level BPE."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 256
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(extra)
            extra += 1
    return chars


def write_tokenizer(out: str):
    """A byte-level BPE with no merges: one token per byte, hence per coefficient < 128."""
    chars = byte_level_table()
    vocab = {chars[b]: b for b in range(256)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    os.makedirs(out, exist_ok=True)
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "processor_config.json"), "w") as f:
        json.dump({"scale": SCALE, "min_token": MIN_TOKEN, "vocab_size": 256, "time_horizon": HORIZON,
                   "action_dim": JOINTS, "processor_class": "UniversalActionProcessor"}, f, indent=2)
    return {v: tokenizer.token_to_id(chars[v]) for v in range(128)}


def build(reach_path: str, out_dir: str):
    tokenizer_dir = os.path.join(out_dir, "sim_reach_fast_tokenizer")
    token_of = write_tokenizer(tokenizer_dir)
    vocab, end = 257, 256
    lookup = np.array([token_of[v] for v in range(128)], np.int64)
    # Orthonormal DCT-II matrix: coefficients = dct @ chunk (per column).
    dct = scipy.fft.dct(np.eye(HORIZON), axis=0, norm="ortho").astype(np.float32)

    reach = onnx.load(reach_path)
    g = reach.graph
    nodes = list(g.node) + [
        helper.make_node("Reshape", ["actions", "chunk_2d"], ["chunk"]),
        helper.make_node("Sub", ["chunk", "q01"], ["shifted"]),
        helper.make_node("Div", ["shifted", "q_range"], ["unit"]),
        helper.make_node("Mul", ["unit", "two"], ["twice"]),
        helper.make_node("Sub", ["twice", "one_f"], ["normalized"]),
        helper.make_node("MatMul", ["dct", "normalized"], ["coefficients"]),
        helper.make_node("Mul", ["coefficients", "scale"], ["scaled"]),
        helper.make_node("Round", ["scaled"], ["rounded"]),
        helper.make_node("Sub", ["rounded", "min_token"], ["offset"]),
        helper.make_node("Clip", ["offset", "zero_f", "max_code"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], ["codes"], to=7),
        helper.make_node("Reshape", ["codes", "flat"], ["codes_flat"]),
        helper.make_node("Gather", ["lookup", "codes_flat"], ["planned"], axis=0),
        helper.make_node("Concat", ["planned", "end_token"], ["plan"], axis=0),
        helper.make_node("Reshape", ["plan", "row"], ["present.tokens"]),
        helper.make_node("Identity", ["zero_i"], ["present.pos"]),
        helper.make_node("Gather", ["plan", "zero_idx"], ["first"], axis=0),
        helper.make_node("OneHot", ["first", "depth", "off_on"], ["logits"], axis=-1),
    ]
    inits = list(g.initializer) + [
        const("chunk_2d", np.array([HORIZON, JOINTS], np.int64)),
        const("q01", np.float32(Q01)), const("q_range", np.float32(Q99 - Q01 + 1e-6)),
        const("two", np.float32(2.0)), const("one_f", np.float32(1.0)), const("dct", dct),
        const("scale", np.float32(SCALE)), const("min_token", np.float32(MIN_TOKEN)),
        const("zero_f", np.float32(0.0)), const("max_code", np.float32(127.0)),
        const("flat", np.array([-1], np.int64)), const("lookup", lookup),
        const("end_token", np.array([end], np.int64)), const("row", np.array([1, HORIZON * JOINTS + 1], np.int64)),
        const("zero_i", np.zeros((1, 1), np.int64)), const("zero_idx", np.array([0], np.int64)),
        const("depth", np.array(vocab, np.int64)), const("off_on", np.array([-10.0, 10.0], np.float32)),
    ]
    prefix = helper.make_graph(
        nodes, "sim_reach_fast_prefix", list(g.input),
        [tensor("logits", [1, vocab]), helper.make_tensor_value_info("present.tokens", 7, [1, HORIZON * JOINTS + 1]),
         helper.make_tensor_value_info("present.pos", 7, [1, 1])],
        inits,
    )
    step = helper.make_graph(
        [
            helper.make_node("Mul", ["input_ids", "zero_i"], ["ignored"]),
            helper.make_node("Add", ["past.pos", "one_i"], ["next"]),
            helper.make_node("Add", ["next", "ignored"], ["present.pos"]),
            helper.make_node("Min", ["present.pos", "last"], ["index_2d"]),
            helper.make_node("Reshape", ["index_2d", "flat"], ["index"]),
            helper.make_node("Reshape", ["past.tokens", "flat"], ["plan"]),
            helper.make_node("Gather", ["plan", "index"], ["token"], axis=0),
            helper.make_node("OneHot", ["token", "depth", "off_on"], ["logits"], axis=-1),
            helper.make_node("Identity", ["past.tokens"], ["present.tokens"]),
        ],
        "sim_reach_fast_step",
        [helper.make_tensor_value_info("input_ids", 7, [1, 1]),
         helper.make_tensor_value_info("past.tokens", 7, [1, HORIZON * JOINTS + 1]),
         helper.make_tensor_value_info("past.pos", 7, [1, 1])],
        [tensor("logits", [1, vocab]), helper.make_tensor_value_info("present.tokens", 7, [1, HORIZON * JOINTS + 1]),
         helper.make_tensor_value_info("present.pos", 7, [1, 1])],
        [const("zero_i", np.zeros((1, 1), np.int64)), const("one_i", np.ones((1, 1), np.int64)),
         const("last", np.full((1, 1), HORIZON * JOINTS, np.int64)), const("flat", np.array([-1], np.int64)),
         const("depth", np.array(vocab, np.int64)), const("off_on", np.array([-10.0, 10.0], np.float32))],
    )
    meta = {"producer": "policies/export/make_sim_fast_policy.py", "source": reach_path}
    save(prefix, os.path.join(out_dir, "sim_reach_fast_prefix.onnx"), meta)
    save(step, os.path.join(out_dir, "sim_reach_fast_step.onnx"), meta)

    # Check: the greedy loop's tokens decode (Python reference) to the reaching network's chunk.
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    state = np.array([[0.3, -0.5, 0.8]], np.float32)
    reach_session = ort.InferenceSession(reach_path, providers=["CPUExecutionProvider"])
    chunk = reach_session.run(None, {"image": image, "state": state})[0][0]
    pre = ort.InferenceSession(os.path.join(out_dir, "sim_reach_fast_prefix.onnx"), providers=["CPUExecutionProvider"])
    stp = ort.InferenceSession(os.path.join(out_dir, "sim_reach_fast_step.onnx"), providers=["CPUExecutionProvider"])
    logits, tokens, pos = pre.run(None, {"image": image, "state": state})
    ids = []
    while (token := int(logits.argmax())) != end and len(ids) < 64:
        ids.append(token)
        logits, tokens, pos = stp.run(None, {"input_ids": np.array([[token]], np.int64), "past.tokens": tokens,
                                             "past.pos": pos})
    decoded = Fast.load(tokenizer_dir).decode(ids)
    assert decoded is not None, ids
    restored = (decoded + 1) / 2 * (Q99 - Q01 + 1e-6) + Q01
    error = np.abs(restored - chunk).max()
    assert error < 0.15, error  # quantization at scale 20 over the +-2.8 rad range
    print(f"wrote sim_reach_fast_prefix.onnx + sim_reach_fast_step.onnx + {tokenizer_dir}: "
          f"{len(ids)} tokens per chunk, decoded chunk within {error:.3f} rad of the reaching network")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reach", default="policies/models/sim_reach.onnx")
    parser.add_argument("--out-dir", default="policies/models")
    args = parser.parse_args()
    build(args.reach, args.out_dir)
