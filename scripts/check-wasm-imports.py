#!/usr/bin/env python3
"""Fails if a .wasm file imports from the "env" module: that means native
code (a C library, a libc symbol) leaked into the browser build."""
import sys


def leb(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def imports(path):
    data = open(path, "rb").read()
    if data[:4] != b"\0asm":
        raise SystemExit(f"{path}: not a wasm module")
    pos = 8
    while pos < len(data):
        section, pos = data[pos], pos + 1
        size, pos = leb(data, pos)
        end = pos + size
        if section == 2:
            count, pos = leb(data, pos)
            for _ in range(count):
                n, pos = leb(data, pos)
                module = data[pos:pos + n].decode()
                pos += n
                n, pos = leb(data, pos)
                name = data[pos:pos + n].decode()
                pos += n
                kind, pos = data[pos], pos + 1
                if kind == 0:
                    _, pos = leb(data, pos)
                elif kind == 1:
                    pos += 1
                    flags, pos = leb(data, pos)
                    _, pos = leb(data, pos)
                    if flags & 1:
                        _, pos = leb(data, pos)
                elif kind == 2:
                    flags, pos = leb(data, pos)
                    _, pos = leb(data, pos)
                    if flags & 1:
                        _, pos = leb(data, pos)
                elif kind == 3:
                    pos += 2
                else:
                    _, pos = leb(data, pos)
                    _, pos = leb(data, pos)
                yield module, name
            return
        pos = end


def main():
    bad = 0
    for path in sys.argv[1:]:
        found = list(imports(path))
        leaked = [name for module, name in found if module == "env"]
        modules = sorted({module for module, _ in found})
        print(f"{path}: {len(found)} imports from {modules or 'nothing'}")
        if leaked:
            print(f"  native symbols leaked into the wasm build: {leaked[:10]}")
            bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
