"""The component tree (max-tree) of a uint8 image: every threshold's connected components at once.

What the tree is. For an (H, W) image ``u`` with values in 0..255, the *upper level set* at level ``L``
is ``{u >= L}``. Its connected components (4- or 8-connected), for all ``L`` together, are nested: a
component at level ``L`` lies inside exactly one component at level ``L - 1``. The *max-tree* has one
node per distinct component; a node's ``level`` is the largest ``L`` at which it is still the same
pixel set, its *own pixels* are those of value exactly ``level``, and its parent is the component
that contains it one distinct level below. The root is the whole image (level ``min(u)``).

How a threshold's components are read from it. With the wsolevaluation foreground ``u > t`` (that is
``u >= t + 1``), the component of a pixel is its node's highest ancestor whose level is ``> t``: the
node ``n`` with ``parent_level[n] <= t < level[n]``, made of the pixels of ``n``'s subtree. So one
tree gives, for every ``t``, every foreground component as a (node, t) pair, and anything additive
over pixels (counts, sums of per-pixel weights) or monotone (bounding-box minima and maxima) is a
*subtree aggregate*, computed once per node. Nodes are numbered in a preorder, so a node's subtree is
a contiguous range of node ids and every aggregate is a range reduction (cumulative sums, a sparse
table for minima).

* Outer contours: the 8-connected max-tree of ``u`` gives the 8-connected components of ``u > t``.
  Their bounding boxes are subtree aggregates; so are ``2 * polygon area`` (unfilled) and the Euler
  number, through per-pixel "quad events" (:func:`quad_events`), hence the number of holes.
* Holes: the background ``u <= t`` is the upper level set ``255 - u >= 255 - t``, so the 4-connected
  max-tree of ``255 - u`` gives every background component of every threshold; a hole is one whose
  bounding box does not touch the image border.

Why this equals OpenCV ``findContours(RETR_TREE)`` at each threshold. Suzuki and Abe's border
following on a binary image with 8-connected foreground traces exactly one outer border per
8-connected foreground component and one hole border per 4-connected background component that does
not reach the image frame (the frame counts as background). An outer border passes through the
component's extreme pixels, so ``boundingRect`` of it is the component's bounding box; a hole border
runs through the foreground pixels around the hole, so its ``boundingRect`` is the hole's bounding box
grown by one pixel. The tree holds exactly these components and holes, with the same bounding boxes,
so the set of contour boxes at each threshold is the same; the contour order and areas that V1 needs
are dealt with in :mod:`camkit.boxes.curves` and :mod:`camkit.boxes.threshold`.

How the tree is built (:func:`max_tree`), without a pixel-wise union-find:

1. every pixel points to its largest neighbour under the total order (value, raster index), if larger
   than itself; pointer jumping gives each pixel's attractor, its *basin*. A pointer chain climbs, so
   the part of a basin at or above any level is connected.
2. The components of ``u >= L`` are unions of basin parts glued by neighbour pairs whose smaller
   value is ``>= L``: single linkage of the basins, with the *pass value* of two basins the largest,
   over the neighbour pairs joining them, of the pair's smaller value. A maximum spanning tree of the
   basin graph (scipy) and a Kruskal pass over its edges (one Python step per basin) give the merge
   *dendrogram*: leaves are basins, an internal node is a merge at its edge's pass value.
3. A pixel of value v belongs to the highest dendrogram ancestor of its basin whose level is ``>= v``
   (binary lifting over the distinct (basin, value) pairs); max-tree nodes are the distinct
   (dendrogram node, value) pairs.
4. Numbering: the Kruskal pass also builds a preorder of the dendrogram (a node, then its first
   child's sequence, then its second's: linked lists concatenated at each merge). Sorting the max-tree
   nodes by (preorder of their dendrogram node, value) puts each subtree in one contiguous range: a
   node (D, v) holds D's nodes of value ``>= v`` (they follow it) and everything below D (right after).

The result is the same tree as skimage's ``max_tree`` (identical nodes and own pixels).

With numba installed (``pip install camkit[fast]``), :func:`max_tree`, :class:`ComponentTree` and
:func:`quad_events` run the compiled kernels of :mod:`camkit.boxes._compiled` instead (a flooding
max-tree; the same nodes, aggregates and weights), unless ``CAMKIT_NO_NUMBA=1``.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

from camkit.boxes import _compiled

__all__ = ["max_tree", "range_min", "ComponentTree", "quad_events", "INT32_MAX_PIXELS"]

# neighbour offsets (dy, dx) that visit every 4- (connectivity 1) or 8-neighbour (2) pair once
_NEIGHBOUR_OFFSETS = {1: ((0, 1), (1, 0)), 2: ((0, 1), (1, 0), (1, 1), (1, -1))}
INT32_MAX_PIXELS = (2 ** 31 - 1) // 256  # images up to this many pixels build their trees in int32
_N_VALUES = 256


def _shifted(a, dy, dx):
    """Views (first, second) of ``a`` pairing each pixel with its (dy, dx) neighbour."""
    h, w = a.shape[:2]
    if dx == 1:
        return a[:h - dy, :w - 1], a[dy:, 1:]
    if dx == 0:
        return a[:h - dy, :], a[dy:, :]
    return a[:h - dy, 1:], a[dy:, :w - 1]


def _pixel_basins(values, offsets, key_dtype):
    """Step 1: the basin (H*W,) of every pixel (ids 0..n_basins-1) and the raster index of each basin's
    root, its largest pixel (n_basins,)."""
    h, w = values.shape
    n = h * w
    order_key = values.astype(key_dtype) * key_dtype(n) + np.arange(n, dtype=key_dtype).reshape(h, w)
    largest_neighbour_key = order_key.copy()   # of the pixel and its neighbours
    for dy, dx in offsets:
        key_a, key_b = _shifted(order_key, dy, dx)
        best_a, best_b = _shifted(largest_neighbour_key, dy, dx)
        np.maximum(best_a, key_b, out=best_a)
        np.maximum(best_b, key_a, out=best_b)
    pointer = (largest_neighbour_key.ravel() % key_dtype(n)).astype(np.intp)
    while True:
        jumped = pointer[pointer]
        if np.array_equal(jumped, pointer):
            break
        pointer = jumped
    roots = np.flatnonzero(pointer == np.arange(n))
    basin_of_root = np.empty(n, key_dtype)
    basin_of_root[roots] = np.arange(roots.size, dtype=key_dtype)
    return basin_of_root[pointer], roots


def _basin_edges(pixel_basin, flat_values, offsets, shape, n_basins):
    """Step 2, the graph: one edge per pair of neighbouring basins, its pass value. Returns
    ``(low_basin, high_basin, pass_value)``, sorted by (low_basin, high_basin)."""
    h, w = shape
    basin_image = pixel_basin.reshape(h, w)
    # neighbour pairs (pixel_a, pixel_a + step) in different basins, as raster indices: few (basin borders)
    first_pixels, steps = [], []
    for dy, dx in offsets:
        basin_a, basin_b = _shifted(basin_image, dy, dx)
        cross = np.flatnonzero(basin_a != basin_b)     # raster index in the view (width basin_a.shape[1])
        row, col = np.divmod(cross, basin_a.shape[1])
        first_pixels.append(row * w + col + (dx < 0))
        steps.append(np.full(cross.size, dy * w + dx))
    pixel_a = np.concatenate(first_pixels)
    pixel_b = pixel_a + np.concatenate(steps)
    basin_a, basin_b = pixel_basin[pixel_a].astype(np.int64), pixel_basin[pixel_b].astype(np.int64)
    low_basin, high_basin = np.minimum(basin_a, basin_b), np.maximum(basin_a, basin_b)
    pass_value = np.minimum(flat_values[pixel_a], flat_values[pixel_b]).astype(np.int64)
    # one edge per basin pair, its largest pass value (sort by pair, then pass; keep each pair's last)
    pair_key = (low_basin * n_basins + high_basin) * _N_VALUES + pass_value
    pair_key.sort()
    pair = pair_key // _N_VALUES
    last_of_pair = np.r_[pair[1:] != pair[:-1], True] if pair.size else np.zeros(0, bool)
    pair_key = pair_key[last_of_pair]
    pair = pair_key // _N_VALUES
    return pair // n_basins, pair % n_basins, pair_key % _N_VALUES


def _merge_edges(low_basin, high_basin, pass_value, n_basins):
    """Step 2, the spanning tree: the edges of a maximum spanning tree of the basin graph, by decreasing
    pass value (stable). Returns three Python lists ``(basin_a, basin_b, merge_level)``."""
    if not low_basin.size:
        return [], [], []
    # the pairs are sorted by (low, high): CSR order already (maximum spanning tree = minimum of 256 - pass)
    indptr = np.zeros(n_basins + 1, np.int32)
    np.cumsum(np.bincount(low_basin, minlength=n_basins), out=indptr[1:])
    graph = csr_matrix((_N_VALUES - pass_value.astype(np.float64), high_basin.astype(np.int32), indptr),
                       shape=(n_basins, n_basins))
    spanning = minimum_spanning_tree(graph)
    rows = np.repeat(np.arange(n_basins), np.diff(spanning.indptr))
    merge_level = (_N_VALUES - spanning.data).astype(np.int64)
    by_level = np.argsort(-merge_level, kind="stable")
    return rows[by_level].tolist(), spanning.indices[by_level].tolist(), merge_level[by_level].tolist()


def _dendrogram(edge_a, edge_b, n_basins):
    """Steps 2 and 4: Kruskal over the sorted edges. Dendrogram node ``n_basins + k`` is the merge of edge
    ``k``. Returns ``(parent, preorder, subtree_stop)`` (each (n_dendro,) int64): the dendrogram parent
    (the root is its own), each node's preorder rank, and the end of its subtree's preorder range
    (``preorder[d] .. subtree_stop[d] - 1``)."""
    n_dendro = n_basins + len(edge_a)
    parent = list(range(n_dendro))
    union_find = list(range(n_basins))
    set_top = list(range(n_basins))        # the dendrogram node that currently represents a set
    # preorder as linked lists: next_in_order links a set's sequence, which runs from set_top[s] to
    # set_tail[s]; subtree_last[d] is the last node of dendrogram node d's own subtree sequence
    next_in_order = [-1] * n_dendro
    set_tail = list(range(n_basins))
    subtree_last = list(range(n_basins)) + [0] * len(edge_a)
    for k, (a, b) in enumerate(zip(edge_a, edge_b)):
        while union_find[a] != a:
            union_find[a] = union_find[union_find[a]]
            a = union_find[a]
        while union_find[b] != b:
            union_find[b] = union_find[union_find[b]]
            b = union_find[b]
        node = n_basins + k
        parent[set_top[a]] = node
        parent[set_top[b]] = node
        next_in_order[node] = set_top[a]
        next_in_order[set_tail[a]] = set_top[b]
        set_tail[a] = subtree_last[node] = set_tail[b]
        union_find[b] = a
        set_top[a] = node
    preorder = np.empty(n_dendro, np.int64)
    d = 0
    while union_find[d] != d:
        d = union_find[d]
    d = set_top[d]  # the root
    for rank in range(n_dendro):  # walk the root's sequence (the image is connected: one set remains)
        preorder[d] = rank
        d = next_in_order[d]
    subtree_stop = preorder[np.asarray(subtree_last, np.int64)] + 1
    return np.asarray(parent, np.int64), preorder, subtree_stop


def _holders(parent, dendro_level, basin, value):
    """Step 3: for (basin, value) pairs, the highest dendrogram ancestor of the basin whose level is
    ``>= value`` (binary lifting: ``ancestor_tables[j]`` is the 2**j-th ancestor)."""
    ancestor_tables = [parent]
    for _ in range(max(1, int(parent.size).bit_length()) - 1):
        ancestor_tables.append(ancestor_tables[-1][ancestor_tables[-1]])
    holder = basin
    for ancestor in reversed(ancestor_tables):
        candidate = ancestor[holder]
        holder = np.where(dendro_level[candidate] >= value, candidate, holder)
    return holder


def max_tree(image, connectivity):
    """Max-tree of an (H, W) integer image in [0, 255]: ``(pixel_node, parent_node, level, subtree_end)``.

    Node = a connected component (``connectivity`` 1 = 4-, 2 = 8-connected) of ``image >= level``, with
    the pixels of value exactly ``level`` as its own pixels; ``pixel_node`` (H*W,) is each pixel's node,
    ``parent_node`` (m,) the parent node (the root is its own parent, every other parent has a lower
    level), ``level`` (m,) int64. Nodes are numbered in a preorder: the subtree of node ``k`` is the
    nodes ``k .. subtree_end[k] - 1`` (``subtree_end`` (m,)). See the module docstring for the steps.
    """
    if _compiled.enabled(image.shape):
        tree = _compiled.component_tree(image, connectivity)
        return tree["pixel_node"], tree["parent_node"], tree["level"], tree["subtree_end"]
    return _numpy_max_tree(image, connectivity)


def _numpy_max_tree(image, connectivity):
    """:func:`max_tree` without numba (the steps of the module docstring)."""
    h, w = image.shape
    n = h * w
    key_dtype = np.int32 if n <= INT32_MAX_PIXELS else np.int64  # pixel-wise keys value * n + index
    values = image.astype(np.uint8)
    flat_values = values.ravel()
    offsets = _NEIGHBOUR_OFFSETS[connectivity]
    pixel_basin, roots = _pixel_basins(values, offsets, key_dtype)
    n_basins = roots.size
    edges = _basin_edges(pixel_basin, flat_values, offsets, (h, w), n_basins)
    edge_a, edge_b, merge_level = _merge_edges(*edges, n_basins)
    parent, preorder, subtree_stop = _dendrogram(edge_a, edge_b, n_basins)
    dendro_level = np.concatenate([flat_values[roots].astype(np.int64), np.asarray(merge_level, np.int64)])
    # distinct (basin, value) pairs -> their holder; max-tree nodes: distinct (holder, value)
    basin_value = pixel_basin.astype(np.int64) * _N_VALUES + flat_values
    # sorted unique keys (O(n log n)), not dense tables of n_basins * 256 entries (slow on noisy maps)
    pair_keys, pair_of_pixel = np.unique(basin_value, return_inverse=True)
    value = pair_keys % _N_VALUES
    holder = _holders(parent, dendro_level, pair_keys // _N_VALUES, value)
    node_key = holder * _N_VALUES + value
    node_keys, node_of_pair = np.unique(node_key, return_inverse=True)   # sorted by (dendrogram node, value)
    n_nodes = node_keys.size
    pixel_node = node_of_pair.ravel()[pair_of_pixel.ravel()]
    node_dendro, node_level = node_keys // _N_VALUES, node_keys % _N_VALUES
    parent_node = _node_parents(parent, node_dendro, n_nodes)
    # renumber the nodes in preorder (step 4)
    sort_key = preorder[node_dendro] * _N_VALUES + node_level
    order = np.argsort(sort_key)
    new_id = np.empty(n_nodes, np.int64)
    new_id[order] = np.arange(n_nodes)
    subtree_end = np.searchsorted(sort_key[order], subtree_stop[node_dendro[order]] * _N_VALUES)
    return new_id[pixel_node], new_id[parent_node[order]], node_level[order], subtree_end


def _node_parents(parent, node_dendro, n_nodes):
    """Parent of every max-tree node (ids in (dendrogram node, value) order): the next lower value of the
    same dendrogram node, else the highest-value node of the nearest dendrogram ancestor that has
    nodes; the root is its own parent."""
    n_dendro = parent.size
    highest_node_of = np.full(n_dendro, -1, np.int64)
    highest_node_of[node_dendro] = np.arange(n_nodes)   # the last of each dendrogram node's nodes
    has_nodes = highest_node_of >= 0
    is_dendro_root = parent == np.arange(n_dendro)
    ancestor = parent.copy()
    while True:
        skip = ~has_nodes[ancestor] & ~is_dendro_root[ancestor]
        if not skip.any():
            break
        ancestor = np.where(skip, parent[ancestor], ancestor)
    same_dendro = np.r_[False, node_dendro[1:] == node_dendro[:-1]]
    node_ids = np.arange(n_nodes)
    parent_node = np.where(same_dendro, node_ids - 1, highest_node_of[ancestor[node_dendro]])
    return np.where(~same_dendro & is_dendro_root[node_dendro], node_ids, parent_node)


def range_min(values, start, stop):
    """Minimum of the rows ``values[start[i]:stop[i]]`` for every i: ``values`` (m, k), ``start`` and
    ``stop`` (q,) with ``start < stop``; returns (q, k). A sparse table ``table`` (L, m, k): level ``l``
    holds the minima of the windows of ``2**l`` rows starting at each row; a range is the union of two
    overlapping windows of ``2**floor(log2(length))`` rows."""
    m = values.shape[0]
    n_levels = m.bit_length()
    table = np.empty((n_levels,) + values.shape, values.dtype)
    table[0] = values
    span = 1
    for lvl in range(1, n_levels):
        np.minimum(table[lvl - 1, :m - span], table[lvl - 1, span:], out=table[lvl, :m - span])
        span *= 2
    length = stop - start
    j = np.frexp(length)[1] - 1                        # floor(log2(length)), exact for integers
    return np.minimum(table[j, start], table[j, stop - (1 << j)])


class ComponentTree:
    """Max-tree of an (H, W) integer image with per-node subtree aggregates.

    Node ``n`` is the connected component (``connectivity`` 1 = 4-, 2 = 8-connected) of the upper level
    set ``image >= level[n]`` containing the node's pixels; ``parent_level[n]`` is its parent's level
    (-1 for the root). Attributes are (n_nodes,) int64 arrays: ``level, parent_level``, the inclusive
    bounding box ``x0, y0, x1, y1``, ``first_pixel`` (the raster index of the component's first pixel),
    ``own_pixel`` (one own pixel's raster index), and ``subtree_sums`` (n_nodes, k): the sums of the
    ``weights`` (H*W, k) columns over each component (``None`` without weights). ``quad=True`` stands
    for ``weights=quad_events(image)`` (the compiled path computes them on the way, never stored).
    """

    def __init__(self, image, connectivity, weights=None, quad=False):
        if quad and weights is not None:
            raise ValueError("give weights or quad=True (weights = quad_events(image)), not both")
        if _compiled.enabled(image.shape):
            tree = _compiled.component_tree(image, connectivity, weights, quad)
            for name in ("level", "parent_level", "x0", "x1", "y0", "y1", "first_pixel", "own_pixel",
                         "subtree_sums"):
                setattr(self, name, tree[name])
            return
        if quad:
            weights = quad_events(image)
        h, w = image.shape
        pixel_node, parent_node, level, subtree_end = max_tree(image, connectivity)
        n = h * w
        raster = np.arange(n)
        n_nodes = level.size
        root = parent_node == np.arange(n_nodes)
        own_pixel = np.empty(n_nodes, np.int64)
        own_pixel[pixel_node] = raster
        xs = raster % w
        # own-pixel minima of x, -x, the raster index and minus it, then over each subtree's node range
        # (the rows are the raster index // w: y0 and y1 come from the first and last pixels)
        minima = np.full((4, n_nodes), n, np.int64)
        for col, vals in enumerate((xs, -xs, raster, -raster)):
            np.minimum.at(minima[col], pixel_node, vals)
        minima = range_min(np.ascontiguousarray(minima.T), np.arange(n_nodes), subtree_end)
        self.level = level
        self.parent_level = np.where(root, -1, level[parent_node])
        self.x0, self.x1 = minima[:, 0], -minima[:, 1]
        self.first_pixel = minima[:, 2]
        self.y0, self.y1 = self.first_pixel // w, -minima[:, 3] // w
        self.own_pixel = own_pixel
        self.subtree_sums = None if weights is None else _subtree_sums(weights, pixel_node, subtree_end)


def _subtree_sums(weights, pixel_node, subtree_end):
    """Sums (m, k) int64 of the per-pixel ``weights`` (H*W, k) over each node's subtree range."""
    n_nodes = subtree_end.size
    own = np.zeros((n_nodes + 1, weights.shape[1]), np.int64)
    for j in range(weights.shape[1]):
        own[1:, j] = np.bincount(pixel_node, weights=weights[:, j], minlength=n_nodes).astype(np.int64)
    before = np.cumsum(own, axis=0)                      # before[k] = sum of the nodes before k
    return before[subtree_end] - before[:-1]


def quad_events(u):
    """Per-pixel weights (H*W, 2) whose subtree sums give, for every 8-connected component of ``u > t``:
    column 0: ``2 * polygon area`` without filling holes; column 1: ``4 * Euler number``.

    For a 2x2 block with corner values a >= b >= c >= d, the block holds ``[a>t]+[b>t]+[c>t]+[d>t]``
    foreground pixels, all in one component. Area: ``2*area = [c>t] + [d>t]``. Euler number (Gray's bit
    quads, 8-connectivity): ``4*chi = n1 - n3 - 2*nD``, i.e. ``[a>t] - (1+2D)[b>t] + (2D-1)[c>t] + [d>t]``
    with D = 1 if the two largest corners are diagonal. The zero-padded border blocks are included.
    Each block's four weights go to the pixels of its corners (the corner of rank r gets the weight of
    ``[rank r > t]``), so a component's sum over its pixels counts its blocks exactly.
    """
    if _compiled.enabled(u.shape):
        return _compiled.quad_events(u)
    return _numpy_quad_events(u)


def _numpy_quad_events(u):
    """:func:`quad_events` without numba."""
    h, w = u.shape
    padded_width = w + 2
    key = np.full((h + 2, padded_width), -1, np.int16)
    key[1:-1, 1:-1] = u
    # composite keys (value + 1) * 4 + corner (TL 0, TR 1, BL 2, BR 3): distinct within a block; a
    # sorting network puts them in decreasing order (ties of value go to one node, so their order does
    # not change the sums). int16: the largest key is 256 * 4 + 3.
    key *= 4
    key += 4
    ranked = [key[:-1, :-1], key[:-1, 1:] + 1, key[1:, :-1] + 2, key[1:, 1:] + 3]
    for i, j in ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)):
        ranked[i], ranked[j] = np.maximum(ranked[i], ranked[j]), np.minimum(ranked[i], ranked[j])
    # corner_pixel[r] (h+1, w+1): padded raster index of each block's r-th largest corner; a padding
    # corner points at a padding pixel, dropped when the counts are cropped to the image
    block_origin = np.arange((h + 1) * padded_width, dtype=np.intp).reshape(h + 1, padded_width)[:, :w + 1]
    corner_pixel = []
    for ranked_key in ranked:
        corner = ranked_key & 3                        # row offset corner >> 1, column offset corner & 1
        index = (corner >> 1).astype(np.intp)
        index *= padded_width
        index += block_origin
        index += corner & 1
        corner_pixel.append(index.ravel())
    size = (h + 2) * padded_width
    counts = [np.bincount(index, minlength=size) for index in corner_pixel]
    diagonal = ((ranked[0] & 3) + (ranked[1] & 3) == 3).ravel()   # TL(0)-BR(3) or TR(1)-BL(2)
    diagonal_counts = [np.bincount(corner_pixel[r][diagonal], minlength=size) for r in (1, 2)]
    area = counts[2] + counts[3]
    # weights 1, -(1 + 2D), 2D - 1, 1 of the four corners
    euler = counts[0] - counts[1] - counts[2] + counts[3] - 2 * diagonal_counts[0] + 2 * diagonal_counts[1]
    out = np.stack([area, euler], 1).reshape(h + 2, padded_width, 2)
    return out[1:-1, 1:-1].reshape(h * w, 2)
