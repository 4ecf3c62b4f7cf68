#!/usr/bin/env python3
"""Seeds the fuzz corpora from the golden vectors.

Usage: fuzz-seeds.py VECTORS CORPUS_ROOT

VECTORS is tests/vectors/protocol-v2.txt ("label: hex" lines). Each
message becomes a seed of the target that decodes it, framed as a node
reads it (a 4-byte big-endian length, then the bytes); commits get a
64-byte signature in front, as the commit target expects. Text seeds
(codes, invites, keys) are written as they are typed. Existing files are
kept: libFuzzer adds to the corpus as it finds new paths.
"""
import hashlib
import os
import sys


def seed(root, target, data):
    folder = os.path.join(root, target)
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        with open(path, "wb") as out:
            out.write(data)


def framed(data):
    return len(data).to_bytes(4, "big") + data


def main():
    vectors, root = sys.argv[1], sys.argv[2]
    with open(vectors, encoding="utf-8") as lines:
        for line in lines:
            label, _, text = line.partition(": ")
            if not text.strip():
                continue
            data = bytes.fromhex(text.strip())
            kind = label.split(" ")[0].rstrip(",")
            if kind in ("sync", "pair", "live", "meet"):
                seed(root, f"{kind}_message", framed(data))
            elif kind == "commit":
                seed(root, "commit", bytes(64) + data)
            elif label == "membership log":
                seed(root, "membership", data)
    for text in ("ABCD-1234", "abcd 1234", "WXYZ-7KQ2", "persist-invite-v1-", "persist-key-v1-"):
        seed(root, "text", text.encode())
    # Key files as written (a key of 32 bytes in hex after the header), and
    # a sealed row's plaintext (postcard: name, value?, fields?).
    for header in ("persist-device-key-v2 ", "persist-device-key-v1 "):
        seed(root, "stored", (header + "ab" * 32 + "\n").encode())
    seed(root, "stored", bytes([2]) + b"n1" + bytes([1, 7]) + b'{"a":1}' + bytes([0]))


if __name__ == "__main__":
    main()
