#!/usr/bin/env python3
"""Re-creates pride_and_prejudice.txt from Debian's r-cran-janeaustenr package, without R.

    apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb pkg
    python3 extract_janeaustenr.py pkg/usr/lib/R/site-library/janeaustenr/data prideprejudice out.txt

The package keeps each novel as an R character vector (one element per line of the Project
Gutenberg text) in a lazy-load database: Rdata.rdx (gzip, the index) and Rdata.rdb (zlib blobs).
Only the parts of R's XDR serialization format that those two files use are read here.
"""
import gzip
import struct
import sys
import zlib


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def int(self):
        (value,) = struct.unpack(">i", self.data[self.pos:self.pos + 4])
        self.pos += 4
        return value

    def unserialize(self):
        assert self.data[:2] == b"X\n", "not an XDR-serialized R object"
        self.pos = 2
        version = self.int()
        self.int(), self.int()  # writer and minimal reader R versions
        if version == 3:
            length = self.int()  # native encoding name
            self.pos += length
        self.refs = []
        return self.item()

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (242, 253, 254):  # empty env, global env, NULL
            return None
        if kind == 255:  # reference to an earlier symbol
            return self.refs[(flags >> 8) - 1]
        if kind == 1:  # symbol
            name = self.item()
            self.refs.append(name)
            return name
        if kind == 9:  # CHARSXP: one string
            n = self.int()
            if n == -1:
                return None
            text = self.data[self.pos:self.pos + n].decode("utf-8")
            self.pos += n
            return text
        if kind in (16, 19):  # character vector, list
            value = [self.item() for _ in range(self.int())]
        elif kind in (10, 13):  # logical, integer vector
            n = self.int()
            value = list(struct.unpack(">%di" % n, self.data[self.pos:self.pos + 4 * n]))
            self.pos += 4 * n
        elif kind == 2:  # pairlist node: attributes, tag, value, rest
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            return {"tag": tag, "value": self.item(), "next": self.item(), "attr": attr}
        else:
            raise ValueError("unsupported R type %d" % kind)
        attrs = self.item() if has_attr else None
        names = attrs["value"] if attrs and attrs["tag"] == "names" else None
        return dict(zip(names, value)) if names else value


def main(data_dir, book, out_path):
    index = Reader(gzip.decompress(open(data_dir + "/Rdata.rdx", "rb").read())).unserialize()
    offset, length = index["variables"][book]
    blob = open(data_dir + "/Rdata.rdb", "rb").read()[offset:offset + length]
    lines = Reader(zlib.decompress(blob[4:])).unserialize()
    with open(out_path, "w", encoding="utf-8") as out:
        out.write("\n".join(line or "" for line in lines) + "\n")
    print("%s: %d lines" % (out_path, len(lines)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
