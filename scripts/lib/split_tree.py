#!/usr/bin/env python3
"""Writes the 10-layer benchmark project over a tree copied to PROJECT/tree: its top two levels
spread over 10 layers balanced by size, and one image of all ten. With GROUPS, also writes
the entries of each layer, a line per layer (bench-project.sh changes a file of one).

    split_tree.py PROJECT/tree PROJECT/gantry.toml [GROUPS]
"""
import os, sys
tree, out = sys.argv[1:3]
groups_file = sys.argv[3] if len(sys.argv) > 3 else os.devnull
def size(rel):
    p = os.path.join(tree, rel)
    if os.path.islink(p) or not os.path.isdir(p):
        return os.lstat(p).st_size
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(p) for f in fs)
# Split any directory bigger than a twentieth of the tree into its entries, so 10 layers can
# be balanced.
limit = size(".") / 20
entries, todo = [], sorted(os.listdir(tree))
while todo:
    rel = todo.pop(0)
    p = os.path.join(tree, rel)
    if os.path.isdir(p) and not os.path.islink(p) and size(rel) > limit:
        todo.extend(os.path.join(rel, c) for c in sorted(os.listdir(p)))
    else:
        entries.append(rel)
# Balance by size: largest first onto the lightest group.
groups = [[0, []] for _ in range(10)]
for rel in sorted(entries, key=size, reverse=True):
    g = min(groups, key=lambda g: g[0])
    g[0] += size(rel)
    g[1].append(rel)
with open(out, "w") as f, open(groups_file, "w") as gf:
    for i, (_, rels) in enumerate(groups):
        f.write(f"[layer.l{i}]\n")
        dirs = [r for r in rels if os.path.isdir(os.path.join(tree, r)) and not os.path.islink(os.path.join(tree, r))]
        files = [r for r in rels if r not in dirs and not os.path.islink(os.path.join(tree, r))]
        links = [r for r in rels if os.path.islink(os.path.join(tree, r))]
        if dirs:
            f.write("dirs = { " + ", ".join(f'"/usr/local/{r}" = "tree/{r}"' for r in sorted(dirs)) + " }\n")
        if files:
            f.write("files = { " + ", ".join(f'"/usr/local/{r}" = "tree/{r}"' for r in sorted(files)) + " }\n")
        if links:
            f.write("symlinks = { " + ", ".join(f'"/usr/local/{r}" = "{os.readlink(os.path.join(tree, r))}"' for r in sorted(links)) + " }\n")
        f.write("\n")
        gf.write(" ".join(rels) + "\n")
    f.write("[image.python]\nplatform = \"linux/amd64\"\nlayers = [" + ", ".join(f'"l{i}"' for i in range(10)) + "]\n")
