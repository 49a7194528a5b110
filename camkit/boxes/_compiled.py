"""Compiled kernels (numba) behind :mod:`camkit.boxes._component_tree` and :mod:`camkit.boxes.curves`.

Optional: installed by ``pip install camkit[fast]``. When ``import numba`` fails, or the environment
variable ``CAMKIT_NO_NUMBA`` is set to anything but ``""`` / ``"0"`` (read at every call, see
:func:`enabled`), the callers use their numpy path instead. Both paths give the same numbers; only the
speed differs (the tests compare them array for array).

* :func:`component_tree`: the max-tree of a uint8 image by flooding (Salembier et al. 1998, in the
  non-recursive form of Nister and Stewenius 2008, "Linear time maximally stable extremal regions"):
  from one pixel, always enter the highest pixel on the boundary of the flooded region (one LIFO list
  per value); climbing to a higher neighbour opens a component, going down to a lower boundary value
  closes the open components above it (each becomes a node, its parent the next open one or a new
  component at the lower value). The region grows through neighbours, so memory is read near where
  it was last read (a union-find over the pixels sorted by value, Berger et al. 2007, was slower
  here: it jumps across the image along each level). The nodes are then numbered in a preorder (a
  depth-first walk), and the per-node aggregates of :class:`camkit.boxes._component_tree.ComponentTree`
  are reduced bottom-up over it. The output contract is
  :func:`camkit.boxes._component_tree.max_tree`'s (the node ids may differ: any preorder is one; the
  nodes, their levels, pixels and aggregates are the same).
* :func:`quad_events`: the per-pixel quad weights of :func:`camkit.boxes._component_tree.quad_events`,
  pixel by pixel (its rank in each of its four blocks, the same ranking of the corners);
  ``component_tree(..., quad=True)`` sums them on the way instead of storing them.
* :func:`filled_twice_area`: ``2 * area`` of one component's outer border, its holes filled, by two
  flood fills in the component's bounding box (what ``curves._filled_twice_area`` does with labelling);
  :func:`largest_components` resolves V1's thresholds with several candidates in one call, filling
  only the candidates whose upper bound can still reach the largest exact area.
* :func:`scatter_max`, :func:`scatter_add`: ``np.maximum.at`` / ``np.add.at`` as plain loops.

The first call compiles the kernels (seconds, once); ``cache=True`` keeps the machine code in
``__pycache__`` (or ``NUMBA_CACHE_DIR``) for the next processes (``benchmarks/bench_eval.py
--first-call`` measures both).
"""
from __future__ import annotations

import os

import numpy as np

try:
    from numba import njit
    AVAILABLE = True
except ImportError:  # the optional "fast" extra is not installed: the numpy paths are used
    AVAILABLE = False

    def njit(*args, **kwargs):
        """Stand-in for ``numba.njit``: leaves the function as plain Python (never called by camkit)."""
        return lambda function: function

__all__ = ["AVAILABLE", "MAX_PADDED_PIXELS", "enabled", "component_tree", "quad_events", "filled_twice_area",
           "largest_components", "scatter_max", "scatter_add"]


MAX_PADDED_PIXELS = 2 ** 31 - 1  # the tree kernel's int32 pixel indices, image padded by one pixel


def enabled(shape=None):
    """True when the compiled kernels are used: numba imports, ``CAMKIT_NO_NUMBA`` is unset, ``""`` or
    ``"0"`` (read at each call, so a test can switch paths in one process), and an image of ``shape``
    (H, W), if given, padded by one pixel has at most :data:`MAX_PADDED_PIXELS` pixels."""
    if shape is not None and (shape[0] + 2) * (shape[1] + 2) > MAX_PADDED_PIXELS:
        return False
    return AVAILABLE and os.environ.get("CAMKIT_NO_NUMBA", "") in ("", "0")


@njit(cache=True, nogil=True)
def _flood_kernel(values, eight, weights, quad):
    h, w = values.shape
    n = h * w
    pw = w + 2
    n_padded = (h + 2) * pw
    # state[p]: 255 not reached yet, else the index of p's next neighbour to look at (padding: reached)
    value = np.zeros(n_padded, np.uint8)
    state = np.zeros(n_padded, np.uint8)
    for y in range(h):
        for x in range(w):
            p = (y + 1) * pw + x + 1
            value[p] = values[y, x]
            state[p] = 255
    offsets = np.array([-1, 1, -pw, pw, -pw - 1, -pw + 1, pw - 1, pw + 1])
    n_offsets = 8 if eight else 4
    # boundary: one LIFO list per value (head[v], next_in[p]); once p is done, next_in[p] is its node
    head = np.full(256, -1, np.int32)
    next_in = np.empty(n_padded, np.int32)
    node_level = np.empty(n, np.int64)
    node_parent = np.empty(n, np.int64)
    stack_node = np.empty(257, np.int64)      # open components, levels increasing to the top
    sp = 0
    m = 0
    cur = pw + 1
    state[cur] = 0
    node_level[0] = value[cur]
    stack_node[0] = 0
    sp = 1
    m = 1
    while True:
        k = np.int64(state[cur])
        climbed = False
        while k < n_offsets:
            nb = cur + offsets[k]
            k += 1
            if state[nb] != 255:
                continue
            state[nb] = 0
            if value[nb] <= value[cur]:
                next_in[nb] = head[value[nb]]
                head[value[nb]] = nb
            else:                              # climb: come back to cur later, open a component
                state[cur] = k
                next_in[cur] = head[value[cur]]
                head[value[cur]] = cur
                cur = nb
                node_level[m] = value[cur]
                stack_node[sp] = m
                sp += 1
                m += 1
                climbed = True
                break
        if climbed:
            continue
        state[cur] = n_offsets
        next_in[cur] = stack_node[sp - 1]
        lvl = np.int64(value[cur])
        while lvl >= 0 and head[lvl] < 0:
            lvl -= 1
        if lvl < 0:
            break
        nxt = head[lvl]
        head[lvl] = next_in[nxt]
        # the flood goes down to lvl: close the components above it
        while lvl < node_level[stack_node[sp - 1]]:
            top = stack_node[sp - 1]
            sp -= 1
            if sp == 0 or lvl > node_level[stack_node[sp - 1]]:
                node_level[m] = lvl           # a new component at lvl holds the closed one
                node_parent[top] = m
                stack_node[sp] = m
                sp += 1
                m += 1
            else:
                node_parent[top] = stack_node[sp - 1]
        cur = nxt
    while sp > 1:
        node_parent[stack_node[sp - 1]] = stack_node[sp - 2]
        sp -= 1
    root = stack_node[0]
    node_parent[root] = root
    key = _quad_keys(values, pw) if quad else np.zeros(1, np.int32)
    return _numbered(values, weights, quad, key, pw, m, root, node_parent, node_level, next_in)


@njit(cache=True, nogil=True)
def _numbered(values, weights, quad, key, pw, m, root, node_parent, node_level, node_of):
    """Preorder ids and aggregates of a tree given by (m,) parents (any order) and each padded pixel's node;
    with ``quad`` the weights are the quad events of the corner keys ``key`` (:func:`_quad_keys`)."""
    h, w = values.shape
    n = h * w
    first_child = np.full(m, -1, np.int64)
    sibling = np.full(m, -1, np.int64)
    for k in range(m):
        if k != root:
            sibling[k] = first_child[node_parent[k]]
            first_child[node_parent[k]] = k
    pre = np.empty(m, np.int64)
    size = np.ones(m, np.int64)
    order = np.empty(m, np.int64)              # nodes in preorder
    todo = np.empty(m, np.int64)
    todo[0] = root
    n_todo = 1
    rank = 0
    while n_todo:
        k = todo[n_todo - 1]
        n_todo -= 1
        pre[k] = rank
        order[rank] = k
        rank += 1
        c = first_child[k]
        while c >= 0:
            todo[n_todo] = c
            n_todo += 1
            c = sibling[c]
    for r in range(m - 1, 0, -1):
        k = order[r]
        size[node_parent[k]] += size[k]
    level = np.empty(m, np.int64)
    parent_node = np.empty(m, np.int64)
    subtree_end = np.empty(m, np.int64)
    for k in range(m):
        j = pre[k]
        level[j] = node_level[k]
        parent_node[j] = pre[node_parent[k]]
        subtree_end[j] = j + size[k]
    pixel_node = np.empty(n, np.int64)
    big = n + 1
    x0 = np.full(m, big, np.int64)
    x1 = np.full(m, -1, np.int64)
    first = np.full(m, big, np.int64)
    last = np.full(m, -1, np.int64)
    own_pixel = np.empty(m, np.int64)
    n_weights = 2 if quad else weights.shape[1]
    sums = np.zeros((m, n_weights), np.int64)
    for y in range(h):
        x = 0
        while x < w:   # a run of pixels of one node in a row at a time
            j = pre[node_of[(y + 1) * pw + x + 1]]
            start = x
            while x < w and pre[node_of[(y + 1) * pw + x + 1]] == j:
                pixel_node[y * w + x] = j
                x += 1
            x0[j] = min(x0[j], start)
            x1[j] = max(x1[j], x - 1)
            first[j] = min(first[j], y * w + start)
            last[j] = max(last[j], y * w + x - 1)
            own_pixel[j] = y * w + x - 1   # the last own pixel in raster order, as the numpy path keeps
            if quad:
                area = 0
                euler = 0
                for q in range((y + 1) * pw + start + 1, (y + 1) * pw + x + 1):
                    a, e = _pixel_quad_events(key, q, pw)
                    area += a
                    euler += e
                sums[j, 0] += area
                sums[j, 1] += euler
                continue
            for c in range(n_weights):
                total = 0
                for r in range(y * w + start, y * w + x):
                    total += weights[r, c]
                sums[j, c] += total
    for j in range(m - 1, 0, -1):
        pj = parent_node[j]
        x0[pj] = min(x0[pj], x0[j])
        x1[pj] = max(x1[pj], x1[j])
        first[pj] = min(first[pj], first[j])
        last[pj] = max(last[pj], last[j])
        for c in range(n_weights):
            sums[pj, c] += sums[j, c]
    parent_level = np.empty(m, np.int64)
    for j in range(m):
        parent_level[j] = -1 if parent_node[j] == j else level[parent_node[j]]
    return (pixel_node, parent_node, level, subtree_end, parent_level, x0, x1, first, last // w,
            first // w, own_pixel, sums)


def component_tree(image, connectivity, weights=None, quad=False):
    """Compiled max-tree of an (H, W) uint8 ``image`` with its aggregates.

    Returns a dict of (m,) int64 arrays: ``pixel_node`` ((H*W,)), ``parent_node``, ``level``,
    ``subtree_end`` (the :func:`camkit.boxes._component_tree.max_tree` contract), ``parent_level``,
    ``x0, x1, y0, y1, first_pixel, own_pixel`` and ``subtree_sums`` ((m, k) int64, ``None`` without
    ``weights`` (H*W, k)), as :class:`camkit.boxes._component_tree.ComponentTree` defines them. ``quad``:
    the weights are :func:`quad_events` of the image, computed on the way (never stored).
    """
    values = np.ascontiguousarray(image, dtype=np.uint8)
    w = np.zeros((values.size, 0), np.int64) if weights is None else np.ascontiguousarray(weights, np.int64)
    out = _flood_kernel(values, connectivity == 2, w, quad)
    names = ("pixel_node", "parent_node", "level", "subtree_end", "parent_level", "x0", "x1", "first_pixel",
             "y1", "y0", "own_pixel", "subtree_sums")
    tree = dict(zip(names, out))
    if weights is None and not quad:
        tree["subtree_sums"] = None
    return tree


@njit(cache=True, nogil=True)
def _quad_keys(values, pw):
    """Corner keys of the padded image (flat): ``(value + 1) * 4`` inside, 0 on the padding (value -1);
    ``key[p] + c`` is pixel p's key as corner c (TL 0, TR 1, BL 2, BR 3) of a block."""
    h, w = values.shape
    key = np.zeros((h + 2) * pw, np.int32)
    for y in range(h):
        for x in range(w):
            key[(y + 1) * pw + x + 1] = (np.int32(values[y, x]) + 1) * 4
    return key


@njit(cache=True, nogil=True, inline="always")
def _pixel_quad_events(key, p, pw):
    """(area, euler) quad weights of padded pixel ``p`` (see :func:`quad_events`): over the four blocks
    that hold it, the weight of its rank among the block's four corner keys (:func:`_quad_keys`)."""
    area = 0
    euler = 0
    for c in range(4):          # the pixel is corner c of the block whose top-left pixel is o
        o = p - (c >> 1) * pw - (c & 1)
        k0 = key[o]
        k1 = key[o + 1] + 1
        k2 = key[o + pw] + 2
        k3 = key[o + pw + 1] + 3
        mine = key[p] + c
        # the pixel's rank in its block (0 = largest), and whether the two largest are diagonal
        r = (k0 > mine) + (k1 > mine) + (k2 > mine) + (k3 > mine)
        r_tl = (k1 > k0) + (k2 > k0) + (k3 > k0)
        r_br = (k0 > k3) + (k1 > k3) + (k2 > k3)
        d = 2 if r_tl + r_br == 1 or r_tl + r_br == 5 else 0   # TL-BR or TR-BL on top
        if r == 0:
            euler += 1
        elif r == 1:
            euler -= 1 + d
        elif r == 2:
            area += 1
            euler += d - 1
        else:
            area += 1
            euler += 1
    return area, euler


@njit(cache=True, nogil=True)
def _quad_kernel(u):
    h, w = u.shape
    pw = w + 2
    key = _quad_keys(u, pw)
    out = np.empty((h * w, 2), np.int64)
    for y in range(h):
        for x in range(w):
            area, euler = _pixel_quad_events(key, (y + 1) * pw + x + 1, pw)
            out[y * w + x, 0] = area
            out[y * w + x, 1] = euler
    return out


def quad_events(u):
    """Compiled :func:`camkit.boxes._component_tree.quad_events`: (H*W, 2) int64, the same weights."""
    return _quad_kernel(np.ascontiguousarray(u, dtype=np.uint8))


@njit(cache=True, nogil=True)
def _filled_kernel(u, level, y0, y1, x0, x1, own_y, own_x):
    n = (y1 - y0 + 1) * (x1 - x0 + 1)
    return _filled_into(u, level, y0, y1, x0, x1, own_y, own_x, np.empty(n, np.int8), np.empty(n, np.int64))


@njit(cache=True, nogil=True)
def _filled_into(u, level, y0, y1, x0, x1, own_y, own_x, buffer, stack):
    """:func:`filled_twice_area` with work buffers (each at least the crop's size) given."""
    ch, cw = y1 - y0 + 1, x1 - x0 + 1
    state = buffer[:ch * cw].reshape((ch, cw))  # 1: the component, 2: background reaching the crop's edge
    state[:] = 0
    stack[0] = (own_y - y0) * cw + (own_x - x0)
    state[own_y - y0, own_x - x0] = 1
    top = 1
    while top:               # 8-connected foreground flood from the own pixel
        top -= 1
        y, x = divmod(stack[top], cw)
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                yy, xx = y + dy, x + dx
                if 0 <= yy < ch and 0 <= xx < cw and state[yy, xx] == 0 and u[y0 + yy, x0 + xx] > level:
                    state[yy, xx] = 1
                    stack[top] = yy * cw + xx
                    top += 1
    dys = np.array([-1, 0, 0, 1])
    dxs = np.array([0, -1, 1, 0])
    for y in range(ch):      # 4-connected background floods from every edge pixel
        for x in range(cw):
            if (y != 0 and y != ch - 1 and x != 0 and x != cw - 1) or state[y, x] != 0:
                continue
            state[y, x] = 2
            stack[0] = y * cw + x
            top = 1
            while top:
                top -= 1
                py, px = divmod(stack[top], cw)
                for k in range(4):
                    yy, xx = py + dys[k], px + dxs[k]
                    if 0 <= yy < ch and 0 <= xx < cw and state[yy, xx] == 0:
                        state[yy, xx] = 2
                        stack[top] = yy * cw + xx
                        top += 1
    twice_area = 0
    for y in range(ch - 1):  # 2 * #quads of 4 filled pixels + #quads of 3
        for x in range(cw - 1):
            count = ((state[y, x] != 2) + (state[y, x + 1] != 2) + (state[y + 1, x] != 2)
                     + (state[y + 1, x + 1] != 2))
            if count == 4:
                twice_area += 2
            elif count == 3:
                twice_area += 1
    return twice_area


def filled_twice_area(u, level, y0, y1, x0, x1, own_y, own_x):
    """``2 * contourArea`` of the outer border of the 8-connected component of ``u > level`` holding pixel
    ``(own_y, own_x)``, whose bounding box is rows ``y0..y1``, columns ``x0..x1`` (inclusive): an int."""
    return int(_filled_kernel(np.ascontiguousarray(u, dtype=np.uint8), int(level), int(y0), int(y1), int(x0),
                              int(x1), int(own_y), int(own_x)))


@njit(cache=True, nogil=True)
def _largest_kernel(u, node, t, upper, has_holes, twice_area, x0, y0, x1, y1, own_pixel, first_pixel):
    h, w = u.shape
    winner = np.full(257, -1, np.int64)
    by_level = np.argsort(t, kind="mergesort")
    buffer = np.empty(h * w, np.int8)
    stack = np.empty(h * w, np.int64)
    start = 0
    while start < by_level.size:
        level = t[by_level[start]]
        stop = start
        while stop < by_level.size and t[by_level[stop]] == level:
            stop += 1
        group = by_level[start:stop]
        exact = np.full(group.size, -1, np.int64)
        best = -1
        for i in range(group.size):   # without holes the tree's area is exact
            nd = node[group[i]]
            if not has_holes[nd]:
                exact[i] = twice_area[nd]
                best = max(best, exact[i])
        # with holes, by decreasing upper bound: fill only while the bound can reach the best so far
        # (a skipped candidate is strictly smaller than the maximum, so it is no tie either)
        holed = np.empty(group.size, np.int64)
        n_holed = 0
        for i in range(group.size):
            if has_holes[node[group[i]]]:
                holed[n_holed] = i
                n_holed += 1
        holed = holed[:n_holed]
        bounds = np.empty(n_holed, np.int64)
        lower = np.empty(n_holed, np.int64)
        for k in range(n_holed):
            bounds[k] = upper[group[holed[k]]]
            lower[k] = twice_area[node[group[holed[k]]]]
        # equal bounds: the largest unfilled area first (the likely winner raises best early)
        by_lower = np.argsort(-lower, kind="mergesort")
        by_bound = by_lower[np.argsort(-bounds[by_lower], kind="mergesort")]
        for k in by_bound:
            if bounds[k] < best:
                break
            nd = node[group[holed[k]]]
            oy = own_pixel[nd] // w
            exact[holed[k]] = _filled_into(u, level, y0[nd], y1[nd], x0[nd], x1[nd], oy, own_pixel[nd] - oy * w,
                                           buffer, stack)
            best = max(best, exact[holed[k]])
        # equal maxima: the last first pixel in raster order wins (see curves._largest_contour_ious)
        chosen = -1
        for i in range(group.size):
            nd = node[group[i]]
            if exact[i] == best and (chosen < 0 or first_pixel[nd] > first_pixel[chosen]):
                chosen = nd
        winner[level] = chosen
        start = stop
    return winner


def largest_components(u, node, t, upper, has_holes, tree):
    """V1's winners at the thresholds with several candidates: ``winner`` (257,) int64, for each level in
    ``t`` the node of largest exact filled area among the candidate pairs ``(node, t)`` (k,) whose exact
    ``2 * area`` is at most ``upper`` (k,) (equal maxima: the largest ``first_pixel`` wins); -1 elsewhere.
    ``has_holes`` (m,) bool and the (m,) arrays of the :class:`ComponentTree` ``tree`` describe the nodes."""
    return _largest_kernel(np.ascontiguousarray(u, dtype=np.uint8), np.ascontiguousarray(node, np.int64),
                           np.ascontiguousarray(t, np.int64), np.ascontiguousarray(upper, np.int64),
                           np.ascontiguousarray(has_holes, np.bool_), tree.subtree_sums[:, 0].copy(),
                           tree.x0, tree.y0, tree.x1, tree.y1, tree.own_pixel, tree.first_pixel)


@njit(cache=True, nogil=True)
def _scatter_max_kernel(out, index, values):
    for i in range(index.size):
        if values[i] > out[index[i]]:
            out[index[i]] = values[i]


@njit(cache=True, nogil=True)
def _scatter_add_kernel(out, index, values):
    for i in range(index.size):
        out[index[i]] += values[i]


def scatter_max(out, index, values):
    """``np.maximum.at(out, index, values)`` in place, for 1-D ``out`` and (k,) ``index``, ``values`` of
    ``out``'s dtype (NaN-free)."""
    _scatter_max_kernel(out, np.ascontiguousarray(index, np.int64), np.ascontiguousarray(values, out.dtype))


def scatter_add(out, index, values):
    """``np.add.at(out, index, values)`` in place, for 1-D ``out`` and (k,) ``index``, ``values``."""
    _scatter_add_kernel(out, np.ascontiguousarray(index, np.int64), np.ascontiguousarray(values, out.dtype))
