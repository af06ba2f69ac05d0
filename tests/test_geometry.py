"""openrecon_stroke.geometry on its own (no server): grids, LPS coordinates, SimpleITK and MRD
headers, assembling series of slices in any order, and the clear errors for slices that do not
form one volume. Expected positions are written out from the conventions, not from the module."""

from __future__ import annotations

import ismrmrd
import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.geometry import (
    GeometryError, Grid, Volume, assemble_series, group_series, image_frame, images_on_headers, slice_order,
    stack_slices,
)

from conftest import marker_series, pixel_lps, rotation

OBLIQUE = rotation(15, -20, 10)


def oblique_grid(shape=(6, 7, 8), spacing=(1.5, 2.0, 3.0)) -> Grid:
    return Grid(shape, spacing, OBLIQUE, (4.0, -3.0, 12.0))


def test_index_and_lps_are_inverse_and_follow_the_direction_columns():
    g = oblique_grid()
    dx, dy, dz = g.spacing
    # voxel (x=1, y=2, z=3) lies 1 dx along read, 2 dy along phase, 3 dz along the slice axis
    expect = g.origin + OBLIQUE[:, 0] * dx + 2 * OBLIQUE[:, 1] * dy + 3 * OBLIQUE[:, 2] * dz
    assert np.allclose(g.index_to_lps((1, 2, 3)), expect)
    pts = np.random.default_rng(0).uniform(-5, 10, (20, 3))
    assert np.allclose(g.index_to_lps(g.lps_to_index(pts)), pts)
    assert np.allclose(g.affine[:3, :3] @ [1, 2, 3] + g.affine[:3, 3], expect)
    assert g.voxel_volume_mm3 == pytest.approx(9.0)


@pytest.mark.parametrize("bad", [
    dict(direction=np.diag([1.0, 1.0, 2.0])), dict(spacing=(1.0, 0.0, 1.0)), dict(spacing=(1.0, np.nan, 1.0)),
    dict(shape=(0, 2, 2)),
])
def test_invalid_grids_are_refused(bad):
    kw = dict(shape=(2, 2, 2), spacing=(1.0, 1.0, 1.0), direction=np.eye(3), origin=(0.0, 0.0, 0.0))
    kw.update(bad)
    with pytest.raises(GeometryError):
        Grid(**kw)


def test_simpleitk_round_trip_keeps_the_geometry_and_array_order():
    g = oblique_grid()
    a = np.arange(np.prod(g.shape), dtype=np.float32).reshape(g.shape)
    img = g.to_sitk(a)
    assert img.GetSize() == (8, 7, 6)  # (x, y, z) in ITK, (z, y, x) in numpy
    assert np.allclose(img.TransformIndexToPhysicalPoint((1, 2, 3)), g.index_to_lps((1, 2, 3)))
    assert Grid.from_sitk(img).same_as(g)
    assert np.array_equal(sitk.GetArrayFromImage(img), a)
    v = Volume.from_sitk(img, "x")
    assert v.grid.same_as(g) and v.description == "x"
    with pytest.raises(GeometryError):
        g.to_sitk(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(GeometryError):
        Volume(np.zeros((2, 2, 2), np.float32), g)


def test_mrd_headers_put_the_position_at_each_field_of_view_centre():
    g = oblique_grid()
    heads = g.slice_headers()
    assert len(heads) == 6
    for k, h in enumerate(heads):
        assert tuple(h.matrix_size) == (8, 7, 1)
        centre = g.index_to_lps(((8 - 1) / 2, (7 - 1) / 2, k))
        assert np.allclose(h.position, centre, atol=1e-5)
        # and the package-independent reading of the header gives back voxel (0, 0, k)
        assert np.allclose(pixel_lps(h, 0, 0), g.index_to_lps((0, 0, k)), atol=1e-4)
    h3 = g.volume_header()
    assert tuple(h3.matrix_size) == (8, 7, 6)
    assert np.allclose(pixel_lps(h3, 0, 0, 0), g.origin, atol=1e-4)


def test_image_frame_uses_slice_dir_or_read_cross_phase():
    images, _ = marker_series("oblique")
    h = images[0].getHead()
    read, phase, normal = image_frame(h)
    assert np.allclose(normal, np.cross(read, phase))
    h.slice_dir[:] = (0.0, 0.0, 0.0)
    assert np.allclose(image_frame(h)[2], normal)
    h.slice_dir[:] = read
    with pytest.raises(GeometryError, match="not perpendicular"):
        image_frame(h)


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "oblique", "flipped"])
def test_assembly_sorts_slices_along_the_normal_whatever_the_arrival_order(orientation):
    images, lps = marker_series(orientation, reverse=True)
    rng = np.random.default_rng(1)
    shuffled = [images[i] for i in rng.permutation(len(images))]
    vol = assemble_series(shuffled)
    assert vol.grid.shape == (12, 36, 40) and np.allclose(vol.grid.spacing, (3.0, 3.5, 6.0))
    k, j, i = np.unravel_index(int(np.argmax(vol.data)), vol.data.shape)
    assert np.allclose(vol.grid.index_to_lps((i, j, k)), lps, atol=1e-4)
    assert np.allclose(vol.grid.direction[:, 2], np.cross(*[np.asarray(v) for v in (images[0].read_dir,
                                                                                         images[0].phase_dir)]))
    # the headers kept for the way back are in grid order
    along = [np.dot(h.position, vol.grid.direction[:, 2]) for h in vol.headers]
    assert along == sorted(along)


def test_a_3d_image_assembles_with_its_own_geometry():
    images, lps = marker_series("oblique", as_3d=True)
    vol = assemble_series(images)
    assert vol.is_3d and vol.grid.shape == (12, 36, 40)
    k, j, i = np.unravel_index(int(np.argmax(vol.data)), vol.data.shape)
    assert np.allclose(vol.grid.index_to_lps((i, j, k)), lps, atol=1e-4)


def test_stack_errors_say_what_is_wrong():
    normal = np.array([0.0, 0.0, 1.0])
    z = np.arange(5, dtype=float) * 2.0
    pos = np.stack([np.zeros(5), np.zeros(5), z], axis=1)
    order, dz = stack_slices(pos[::-1], normal, 1.0, "s")
    assert dz == pytest.approx(2.0) and list(order) == [4, 3, 2, 1, 0]
    assert stack_slices(pos[:1], normal, 1.0, "s")[1] is None
    with pytest.raises(GeometryError, match="s: 1 slice.*share a position"):
        stack_slices(np.vstack([pos, pos[2]]), normal, 1.0, "s")
    irregular = pos.copy()
    irregular[3, 2] += 0.7
    with pytest.raises(GeometryError, match="irregular slice spacing"):
        stack_slices(irregular, normal, 1.0, "s")
    shifted = pos.copy()
    shifted[4, 0] += 0.5
    with pytest.raises(GeometryError, match="shifted in-plane by up to 0.50 mm"):
        stack_slices(shifted, normal, 1.0, "s")
    assert list(slice_order(pos[[2, 0, 1]], -normal)) == [0, 2, 1]


def test_series_that_are_not_one_volume_are_refused():
    images, _ = marker_series("axial")
    mixed = images[:6] + marker_series("coronal")[0][6:]
    with pytest.raises(GeometryError, match="different orientations"):
        assemble_series(mixed)
    with pytest.raises(GeometryError, match="no images"):
        assemble_series([])


def test_images_on_headers_and_group_series():
    g = oblique_grid()
    data = np.arange(np.prod(g.shape), dtype=np.uint16).reshape((1,) + g.shape)
    ims = images_on_headers(data, g.slice_headers(), 7, image_type=ismrmrd.IMTYPE_MAGNITUDE)
    assert [int(im.image_index) for im in ims] == list(range(1, 7))
    assert {int(im.image_series_index) for im in ims} == {7}
    assert all(np.array_equal(im.data[0, 0], data[0, k]) for k, im in enumerate(ims))
    back = assemble_series(ims)
    assert back.grid.same_as(g) and np.array_equal(back.data, data[0])
    one = images_on_headers(data, [g.volume_header()], 8)
    assert len(one) == 1 and tuple(one[0].matrix_size) == (8, 7, 6)
    groups = group_series(ims[:2] + one + ims[2:])
    assert list(groups) == [7, 8] and len(groups[7]) == 6
