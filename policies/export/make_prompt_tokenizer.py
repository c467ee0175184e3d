"""Make the prompt-tokenizer fixture and its reference encodings (deterministic).

Trains a small BPE tokenizer shaped like PaliGemma's (Gemma's): special tokens
<pad>=0, <eos>=1, <bos>=2, <unk>=3, the 256 byte-fallback tokens <0x00>..<0xFF>,
spaces as "▁" (no dummy prefix), and a post-processor that prepends <bos>. The
corpus is synthetic robot instructions made from word lists with a seeded
`random.Random`, so running this twice writes identical files.

Writes to --out (default policies/models/test/prompt):
- tokenizer.json;
- reference.json: for each prompt and each setting, the `input_ids`,
  `attention_mask` and `truncated` (an overflowing part exists) that Python
  `tokenizers` produces with enable_padding(length=L, pad_id, direction) +
  enable_truncation(max_length=L) + encode(text, add_special_tokens). The text is
  first prepared as openpi / LeRobot do: `clean` is openpi's
  text.strip().replace("_", " ").replace("\\n", " "); `append_newline` adds "\\n"
  unless the text already ends with one (LeRobot's rule; after cleaning it never
  does, which is openpi's).

    .venv/bin/python policies/export/make_prompt_tokenizer.py --out policies/models/test/prompt

Uses only `tokenizers` and the standard library.
"""

import argparse
import json
import os
import random

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]

VERBS = ["pick up", "place", "put", "move", "push", "pull", "open", "close", "stack", "wipe",
         "fold", "pour", "grasp", "lift", "rotate", "slide", "insert", "turn on", "turn off",
         "hang", "drop", "sort", "clean", "take out", "bring"]
ADJECTIVES = ["red", "green", "blue", "yellow", "black", "white", "small", "large", "empty",
              "wooden", "metal", "plastic", "striped", "tall", "round", "left", "right"]
OBJECTS = ["cube", "block", "bowl", "cup", "mug", "plate", "sponge", "towel", "drawer",
           "door", "lid", "bottle", "can", "apple", "banana", "spoon", "fork", "marker",
           "box", "basket", "shirt", "faucet", "microwave", "stove", "pot", "pan", "tray",
           "café cup", "crème jar", "jalapeño", "piñata"]
PLACES = ["in the bowl", "on the plate", "into the basket", "on the shelf", "next to the sink",
          "on the table", "in the drawer", "onto the tray", "behind the box", "in the cabinet",
          "on the left", "on the right", "near the robot", "under the lid"]
EXTRAS = ["", "", "", " carefully", " slowly", " and then stop", " twice", " quickly"]


def instruction(rng):
    verb = rng.choice(VERBS)
    obj = rng.choice(OBJECTS)
    if rng.random() < 0.7:
        obj = f"{rng.choice(ADJECTIVES)} {obj}"
    text = f"{verb} the {obj}"
    if rng.random() < 0.6:
        text += f" {rng.choice(PLACES)}"
    text += rng.choice(EXTRAS)
    if rng.random() < 0.2:
        text = text[0].upper() + text[1:]
    return text + "\n"


def build_tokenizer(seed, vocab_size):
    rng = random.Random(seed)
    corpus = [instruction(rng) for _ in range(4000)]

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainee = Tokenizer(models.BPE(unk_token="<unk>"))
    trainee.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  show_progress=False)
    trainee.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(trainee.to_str())["model"]

    # Gemma's layout: specials, then byte-fallback tokens, then the learned pieces.
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                                     byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = metaspace
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    return tokenizer


PROMPTS = [
    "pick up the red cube and place it in the bowl",
    "Open the drawer",
    "",
    "put the café cup on the plate ☕🤖 — très bien, señor",
    "stack_the_blocks\nthen wipe the table",
    "_open_the_drawer_",
    "  fold the towel  \n",
    "wipe the table\n",
    "\x1cturn off the stove\x1f",
    "say <eos> then <bos> again",
    "東京の箱を開けて",
    " ".join(["pick up the small green block from the tray, rotate it twice, and insert it into "
              "the round hole next to the sink"] * 3),
]

SETTINGS = [
    {"name": "right16", "max_length": 16, "padding_side": "right", "pad_id": None,
     "add_special_tokens": True, "append_newline": True, "clean": False},
    {"name": "left16", "max_length": 16, "padding_side": "left", "pad_id": None,
     "add_special_tokens": True, "append_newline": True, "clean": False},
    {"name": "pi0_48", "max_length": 48, "padding_side": "right", "pad_id": None,
     "add_special_tokens": True, "append_newline": True, "clean": True},
    {"name": "no_special16", "max_length": 16, "padding_side": "right", "pad_id": None,
     "add_special_tokens": False, "append_newline": False, "clean": False},
    {"name": "left8_eos_pad", "max_length": 8, "padding_side": "left", "pad_id": 1,
     "add_special_tokens": True, "append_newline": True, "clean": True},
]


def prepare(text, setting):
    if setting["clean"]:
        text = text.strip().replace("_", " ").replace("\n", " ")
    if setting["append_newline"] and not text.endswith("\n"):
        text += "\n"
    return text


def encode_all(path, setting, prompts):
    tokenizer = Tokenizer.from_file(path)
    pad_id = setting["pad_id"]
    if pad_id is None:
        pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else tokenizer.token_to_id("<pad>")
    tokenizer.enable_padding(length=setting["max_length"], pad_id=pad_id,
                             direction=setting["padding_side"])
    tokenizer.enable_truncation(max_length=setting["max_length"])
    out = []
    for prompt in prompts:
        encoding = tokenizer.encode(prepare(prompt, setting),
                                    add_special_tokens=setting["add_special_tokens"])
        out.append({"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
                    "truncated": len(encoding.overflowing) > 0})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="policies/models/test/prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=500,
                        help="learned vocabulary (the 256 byte tokens come on top)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.json")
    build_tokenizer(args.seed, args.vocab_size).save(path, pretty=True)

    results = {s["name"]: encode_all(path, s, PROMPTS) for s in SETTINGS}
    reference = {"tokenizers_version": tokenizers.__version__, "settings": SETTINGS,
                 "prompts": PROMPTS, "results": results}
    with open(os.path.join(args.out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, indent=1, ensure_ascii=False)
        f.write("\n")
    vocab = Tokenizer.from_file(path).get_vocab_size()
    truncated = sum(r["truncated"] for rs in results.values() for r in rs)
    print(f"wrote {args.out}: vocab {vocab}, {len(PROMPTS)} prompts x {len(SETTINGS)} settings, "
          f"{truncated} truncated")


if __name__ == "__main__":
    main()
