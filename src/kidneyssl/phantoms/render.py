"""Paint a :class:`PhantomAnatomy` into a HU volume on a :class:`Grid` (painter's algorithm).

Order: air, body (subcutaneous fat, muscle wall, ribs, visceral fat), bowel, colon, stomach,
liver (vessels, gallbladder), spleen, pancreas, perirenal fat, muscles (psoas, quadratus,
paraspinal), spine, great vessels and renal vessels, kidneys, tumours. Later structures cover
earlier ones. Irregular organ outlines and bowel loops use smooth random fields sampled from a
lattice fixed in the anatomical frame, so one seed gives the same anatomy at any resolution.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kidneyssl.io.geometry import Side
from kidneyssl.phantoms.anatomy import PhantomAnatomy
from kidneyssl.phantoms.shapes import Grid, capsule_box, capsule_mask, ellipsoid_field, kidney_masks, tumour_field

__all__ = ["render_hu", "smooth_fields"]

_LATTICE_MM = 8.0
_LATTICE_LO = np.array([-320.0, -264.0, -264.0])
_LATTICE_SHAPE = (81, 67, 67)
_FIELDS = ("shape", "bowel", "gas", "bias", "texture")


def smooth_fields(seed: int, grid: Grid) -> dict[str, np.ndarray]:
    """Smooth zero-mean, unit-sd random fields (float32, ``grid.shape``), fixed in the anatomical
    frame (a random lattice of 8 mm spacing, Gaussian-smoothed, sampled with linear interpolation).

    Sampling is separable two-tap linear interpolation along each axis (gathers + a weighted sum),
    ~5x faster here than ``scipy.ndimage.affine_transform``/``zoom`` with ``order=1``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF1E1D]))
    sigmas = {"shape": 1.6, "bowel": 1.1, "gas": 1.3, "bias": 5.0, "texture": 0.7}
    lattice = np.empty((len(_FIELDS),) + _LATTICE_SHAPE, dtype=np.float32)
    for n, name in enumerate(_FIELDS):
        field = ndimage.gaussian_filter(rng.standard_normal(_LATTICE_SHAPE).astype(np.float32), sigmas[name])
        lattice[n] = field / (field.std() + 1e-6)
    out = lattice
    for axis in range(3):
        size = _LATTICE_SHAPE[axis]
        pos = (grid.origin[axis] + np.arange(grid.shape[axis]) * grid.spacing[axis] - _LATTICE_LO[axis]) / _LATTICE_MM
        pos = np.clip(pos, 0.0, size - 1.000001)
        i0 = np.floor(pos).astype(np.intp)
        shape = [1, 1, 1, 1]
        shape[axis + 1] = -1
        frac = (pos - i0).astype(np.float32).reshape(shape)
        lo, hi = np.take(out, i0, axis=axis + 1), np.take(out, i0 + 1, axis=axis + 1)
        out = lo + frac * (hi - lo)
    return {name: out[n] for n, name in enumerate(_FIELDS)}


def _paint_rows(img: np.ndarray, rows: np.ndarray, mask2d: np.ndarray, value: float) -> None:
    """Set ``value`` in the axial ``mask2d`` (Y, X) on the slices where ``rows`` (Z,) is true."""
    img[rows[:, None, None] & mask2d[None]] = value


def _ellipse2d(grid: Grid, cv: float, cw: float, rv: float, rw: float) -> np.ndarray:
    v = grid.coords(1)[:, None]
    w = grid.coords(2)[None, :]
    return ((v - cv) / rv) ** 2 + ((w - cw) / rw) ** 2 < 1.0


def render_hu(anat: PhantomAnatomy, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """HU image (float32, ``grid.shape``, no noise yet) and the body mask (bool)."""
    hu_of = anat.hu
    p = anat.params
    fields = smooth_fields(anat.seed, grid)
    img = np.full(grid.shape, -1000.0, dtype=np.float32)
    liver_id = np.zeros(grid.shape, dtype=bool)
    half_v, half_w = anat.body_half_axes
    u = grid.coords(0)
    v2 = grid.coords(1)[:, None]
    w2 = grid.coords(2)[None, :]
    # --- body wall: skin/fat, muscle ring, visceral cavity -------------------------------------
    body_f = (np.abs(v2 / half_v) ** 2.3 + np.abs(w2 / half_w) ** 2.1)
    body = body_f < 1.0
    in_v, in_w = half_v - anat.fat_mm, half_w - anat.fat_mm
    muscle_outer = (v2 / in_v) ** 2 + (w2 / in_w) ** 2 < 1.0
    cv, cw = in_v - anat.wall_mm, in_w - anat.wall_mm
    cavity = (v2 / cv) ** 2 + (w2 / cw) ** 2 < 1.0
    img[:, body] = hu_of["fat"]
    img[:, muscle_outer] = hu_of["muscle"]
    img[:, cavity] = hu_of["fat"]
    top_u = min(k.center[0] for k in anat.kidneys.values()) - 40.0
    # ribs: posterolateral arcs just inside the muscle wall, every ~26 mm above the kidneys' middle
    rib_ring = ((v2 / (cv + 2)) ** 2 + (w2 / (cw + 2)) ** 2 < 1.0) & ((v2 / (cv - 6)) ** 2 + (w2 / (cw - 6)) ** 2 >= 1.0)
    angle = np.degrees(np.arctan2(np.abs(w2), v2))  # 0 = straight back, 180 = front
    rib_rows = (((u - p["vertebra_phase"]) % 26.0) < 8.0) & (u < top_u + 30.0)
    for i in np.nonzero(rib_rows)[0]:
        reach = 100.0 + 0.5 * max(0.0, top_u + 30.0 - u[i])  # ribs reach further forward higher up
        arc = rib_ring & (angle > 28.0) & (angle < min(reach, 160.0))
        img[i][arc] = hu_of["bone_cortical"] * 0.8
    cav3 = np.broadcast_to(cavity, grid.shape)
    # --- small bowel: loops from a smooth random field, anterior and lower abdomen --------------
    b = fields["bowel"]
    anterior = v2 < 0.35 * half_v
    bowel_zone = cav3 & anterior & (u[:, None, None] > top_u + 20.0)
    lumen = bowel_zone & (b > 0.35)
    wall = bowel_zone & (b > 0.1) & ~lumen
    img[wall] = hu_of["bowel_wall"]
    img[lumen] = hu_of["fluid"] + 8.0 * fields["texture"][lumen]
    img[lumen & (fields["gas"] > 1.0)] = -850.0
    # --- colon: ascending (right), descending (left), transverse (front) -------------------------
    bottom_u = grid.origin[0] + grid.shape[0] * grid.spacing[0] + 50.0
    rk = anat.kidneys.get(Side.RIGHT)
    lk = anat.kidneys.get(Side.LEFT)
    hep_u = (rk.center[0] if rk is not None else 10.0) - 10.0
    spl_u = (lk.center[0] if lk is not None else -10.0) - 55.0
    colon = [
        (np.array([bottom_u, -0.15 * half_v, -0.68 * cw]), np.array([hep_u, -0.1 * half_v, -0.66 * cw]), 20.0),
        (np.array([bottom_u, -0.05 * half_v, 0.74 * cw]), np.array([spl_u, 0.05 * half_v, 0.72 * cw]), 17.0),
        (np.array([hep_u, -0.1 * half_v, -0.66 * cw]), np.array([hep_u + 35, -0.62 * half_v, 0.0]), 19.0),
        (np.array([hep_u + 35, -0.62 * half_v, 0.0]), np.array([spl_u, 0.05 * half_v, 0.72 * cw]), 18.0),
    ]
    for p0, p1, radius in colon:
        box = capsule_box(grid, p0, p1, radius)
        if box is None:
            continue
        outer = capsule_mask(box, p0, p1, radius) & cav3[box.slices]
        inner = capsule_mask(box, p0, p1, radius - 3.0) & outer
        region = img[box.slices]
        region[outer] = hu_of["bowel_wall"]
        gas = inner & (fields["gas"][box.slices] > 1.0 - 2.0 * p["colon_gas"])
        stool = inner & ~gas
        region[stool] = 25.0 + 40.0 * fields["texture"][box.slices][stool]
        region[gas] = -900.0
    # --- stomach: left upper quadrant, air-fluid level (gas rises anteriorly, patient supine) ---
    sc = np.array([spl_u - 20.0, -0.35 * half_v, 0.32 * cw])
    sr = np.array([55.0, 0.3 * half_v, 0.3 * cw])
    box = grid.box(sc - sr, sc + sr)
    if box is not None:
        f = ellipsoid_field(box, sc, sr) + 0.15 * fields["shape"][box.slices]
        region = img[box.slices]
        region[f < 1.0] = hu_of["bowel_wall"]
        inner = f < 0.8
        level = sc[1] - sr[1] + 2.0 * sr[1] * (1.0 - p["stomach_fill"])
        region[inner & (box.v >= level)] = hu_of["fluid"]
        region[inner & (box.v < level)] = -950.0
    # --- liver: right lobe above/beside the right kidney, inferior tongue, left lobe -------------
    ls = p["liver_scale"]
    lu = p["liver_u"]
    lobes = [
        (np.array([lu, -0.05 * half_v, -0.48 * cw]), np.array([95.0, 0.85 * half_v, 0.52 * cw]) * ls),
        (np.array([lu + 55.0, -0.15 * half_v, -0.62 * cw]), np.array([55.0, 0.5 * half_v, 0.3 * cw]) * ls),
        (np.array([lu - 10.0, -0.45 * half_v, 0.15 * cw]), np.array([55.0, 0.35 * half_v, 0.45 * cw]) * ls),
    ]
    for center, radii in lobes:
        box = grid.box(center - radii - 10, center + radii + 10)
        if box is None:
            continue
        m = ((ellipsoid_field(box, center, radii) + 0.12 * fields["shape"][box.slices]) < 1.0) & cav3[box.slices]
        img[box.slices][m] = hu_of["liver"]
        liver_id[box.slices] |= m
    vrng = np.random.default_rng(np.random.SeedSequence([anat.seed, 0x11E7]))
    porta = np.array([lu + 25.0, -0.1 * half_v, -0.3 * cw])
    for _ in range(10):
        direction = vrng.normal(size=3) * np.array([0.8, 0.6, 1.0]) + np.array([-0.3, 0.0, -0.5])
        end = porta + direction / np.linalg.norm(direction) * vrng.uniform(40.0, 100.0)
        radius = float(vrng.uniform(2.5, 6.5))
        box = capsule_box(grid, porta, end, radius)
        if box is not None:
            m = capsule_mask(box, porta, end, radius) & liver_id[box.slices]
            img[box.slices][m] = hu_of["portal"]
    if p["gallbladder"] > 0.5:
        gc = np.array([lu + 60.0, -0.55 * half_v, -0.35 * cw])
        gr = np.array([35.0, 14.0, 16.0])
        box = grid.box(gc - gr, gc + gr)
        if box is not None:
            img[box.slices][ellipsoid_field(box, gc, gr) < 1.0] = hu_of["fluid"]
    # --- spleen: posterolateral left upper quadrant, beside/above the left kidney ----------------
    su = (lk.center[0] if lk is not None else 0.0) - 50.0
    spc = np.array([su, 0.3 * half_v, 0.72 * cw])
    spr = np.array([55.0, 0.45 * half_v, 0.22 * cw]) * p["spleen_scale"]
    rot = np.deg2rad(35.0)
    spl_axes = np.array([[1, 0, 0], [0, np.cos(rot), -np.sin(rot)], [0, np.sin(rot), np.cos(rot)]])
    box = grid.box(spc - spr.max(), spc + spr.max())
    if box is not None:
        m = ((ellipsoid_field(box, spc, spr, spl_axes) + 0.1 * fields["shape"][box.slices]) < 1.0) & cav3[box.slices]
        img[box.slices][m] = hu_of["spleen"]
    # --- pancreas: from the splenic hilum across the aorta towards the duodenum ------------------
    pu = (lk.center[0] if lk is not None else 0.0) - 25.0
    av = anat.spine_v - 34.0
    pts = [np.array([pu - 10, 0.1 * half_v, 0.55 * cw]), np.array([pu, av - 25.0, 0.15 * cw]),
           np.array([pu + 15, av - 25.0, -0.2 * cw]), np.array([pu + 30, av - 15.0, -0.35 * cw])]
    for p0, p1 in zip(pts[:-1], pts[1:]):
        box = capsule_box(grid, p0, p1, 11.0)
        if box is not None:
            img[box.slices][capsule_mask(box, p0, p1, 11.0)] = hu_of["pancreas"]
    # --- perirenal fat ------------------------------------------------------------------------
    kid_masks = {side: kidney_masks(grid, k) for side, k in anat.kidneys.items()}
    for km in kid_masks.values():
        if km is not None:
            img[km.box.slices][km.perirenal] = hu_of["fat"] + 10.0
    # --- muscles ------------------------------------------------------------------------------
    vb_rv, vb_rw = 16.0, 23.0
    sv = anat.spine_v
    uu = u[:, None, None]
    grow = np.clip((uu - top_u + 20.0) * 0.12 + 8.0, 8.0, 26.0)  # psoas widens going down
    for sign in (-1.0, 1.0):
        psoas = ((v2 - (sv - 2.0 + 0.2 * grow)) / (0.9 * grow)) ** 2 + ((w2 - sign * (vb_rw + grow * 0.9)) / grow) ** 2 < 1.0
        img[psoas & (uu > top_u - 20.0)] = hu_of["muscle"]
        ql = _ellipse2d(grid, sv + 22.0, sign * (vb_rw + 45.0), 12.0, 16.0)
        img[int(np.searchsorted(u, top_u + 20.0)):, ql] = hu_of["muscle"]
        para = _ellipse2d(grid, sv + 45.0, sign * 33.0, 22.0, 28.0) & muscle_outer
        img[:, para] = hu_of["muscle"]
    # --- spine: vertebral bodies with discs, canal, posterior arch -----------------------------
    vb = _ellipse2d(grid, sv, 0.0, vb_rv, vb_rw)
    vb_in = _ellipse2d(grid, sv, 0.0, vb_rv - 2.5, vb_rw - 2.5)
    canal_c = sv + vb_rv + 10.0
    canal = _ellipse2d(grid, canal_c, 0.0, 8.5, 10.0)
    arch = _ellipse2d(grid, canal_c + 1.0, 0.0, 15.0, 16.0) & ~canal & (v2 > canal_c - 6.0)
    spinous = (np.abs(w2) < 3.5) & (v2 > canal_c) & (v2 < canal_c + 38.0)
    transverse = (np.abs(w2) < 42.0) & (np.abs(v2 - canal_c + 6.0) < 3.0)
    phase = (u - p["vertebra_phase"]) % 34.0
    bone_rows = phase >= 7.0  # 27 mm vertebral bodies, 7 mm discs
    _paint_rows(img, ~bone_rows, vb, 85.0)
    _paint_rows(img, bone_rows, vb, hu_of["bone_cortical"])
    _paint_rows(img, bone_rows, vb_in, hu_of["bone_cancellous"])
    _paint_rows(img, bone_rows, arch, hu_of["bone_cortical"] * 0.85)
    _paint_rows(img, bone_rows & (phase > 12) & (phase < 30), spinous, hu_of["bone_cortical"] * 0.8)
    _paint_rows(img, bone_rows & (phase > 9) & (phase < 20), transverse, hu_of["bone_cortical"] * 0.8)
    img[:, canal] = 25.0
    # --- great vessels and renal vessels --------------------------------------------------------
    ao_w, ao_r, ivc_w = p["aorta_w"], p["aorta_r"], p["ivc_w"]
    ao_v = sv - vb_rv - ao_r - 2.0
    ivc_v = sv - vb_rv - 11.0
    bif = p["bifurcation_u"]
    _paint_rows(img, u < bif, _ellipse2d(grid, ao_v, ao_w, ao_r, ao_r), hu_of["aorta"])
    img[:, _ellipse2d(grid, ivc_v, ivc_w, 10.0, 14.0)] = hu_of["ivc"]
    for sign in (-1.0, 1.0):  # common iliac arteries below the bifurcation
        p0 = np.array([bif, ao_v, ao_w])
        p1 = np.array([bottom_u, ao_v + 10.0, sign * 60.0])
        box = capsule_box(grid, p0, p1, ao_r * 0.7)
        if box is not None:
            img[box.slices][capsule_mask(box, p0, p1, ao_r * 0.7)] = hu_of["aorta"]
    for side, k in anat.kidneys.items():
        hilum = k.hilum_point()
        art0 = np.array([k.center[0] - 5.0, ao_v, ao_w])
        ivc0 = np.array([k.center[0] - 5.0, ivc_v, ivc_w])
        vein = [hilum, ivc0] if side is Side.RIGHT else [hilum, np.array([hilum[0], ao_v - ao_r - 6.0, ao_w]), ivc0]
        for (p0, p1), radius, value in [((art0, hilum), 3.0, hu_of["aorta"])] + \
                [((a, b_), 5.0, hu_of["ivc"]) for a, b_ in zip(vein[:-1], vein[1:])]:
            box = capsule_box(grid, p0, p1, radius)
            if box is not None:
                img[box.slices][capsule_mask(box, p0, p1, radius)] = value
        ureter0 = k.center + k.axes[1] * k.half_axes[1] * 0.8
        ureter1 = np.array([bottom_u, sv - 5.0, np.sign(k.center[2]) * 40.0])
        box = capsule_box(grid, ureter0, ureter1, 2.5)
        if box is not None:
            img[box.slices][capsule_mask(box, ureter0, ureter1, 2.5)] = hu_of["fluid"] + 15.0
    # --- kidneys and tumours ------------------------------------------------------------------
    for side, km in kid_masks.items():
        if km is None:
            continue
        k = anat.kidneys[side]
        region = img[km.box.slices]
        region[km.sinus] = hu_of["fat"] + 35.0
        region[km.parenchyma] = k.cortex_hu
        region[km.medulla] = k.medulla_hu
        region[km.pelvis] = hu_of["fluid"]
        for tumour in k.tumours:
            r = float(np.max(tumour.radii)) * 1.2
            box = grid.box(tumour.center - r, tumour.center + r)
            if box is None:
                continue
            f = tumour_field(box, tumour)
            inside = f < 1.0
            tex = fields["texture"][box.slices]
            values = tumour.hu + 12.0 * tex
            if tumour.necrotic:
                values = np.where(f < 0.3, np.minimum(values, 15.0 + 6.0 * tex), values)
            img[box.slices][inside] = values[inside]
    # --- smooth intensity variation inside the body -------------------------------------------
    img[:, body] += hu_of["bias_sd"] * fields["bias"][:, body]
    return img, np.broadcast_to(body, grid.shape)
