"""Raw k-space reconstruction against references that share no code with the project.

* ISMRMRD's own C++ tools (Debian ``ismrmrd-tools``): ``ismrmrd_generate_cartesian_shepp_logan``
  writes multi-coil, readout-oversampled Cartesian k-space with a noise readout first, and
  ``ismrmrd_recon_cartesian_2d`` reconstructs it (FFT, oversampling removed, root-sum-of-squares).
  The very same readouts go through our server; the two images must agree to float precision.
* Analytic k-space of a known object (a Gaussian blob off the field-of-view centre, on an
  oblique 3D encoding): the MR signal equation s(k) = integral of rho(x) exp(-2 pi i k.x) dx, written
  here in closed form, not with the project's forward model (``simulator/raw.py``). The blob must
  come back where it was put, in LPS, from the returned image header alone.

A shared sign, axis-order or centring error between our forward model and our reconstruction
cancels out in the round-trip test of ``test_server.py``; it cannot cancel out here.
"""

from __future__ import annotations

import shutil
import subprocess

import h5py
import ismrmrd
import numpy as np
import pytest

from openrecon_stroke.mrdfile import make_header_xml
from simulator.replay import send_stream

from conftest import pixel_lps, rotation
from test_server import by_role, scanner_messages

GENERATE = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
RECON = shutil.which("ismrmrd_recon_cartesian_2d")
needs_ismrmrd_tools = pytest.mark.skipif(
    GENERATE is None or RECON is None,
    reason="ISMRMRD C++ tools not installed (apt-get install ismrmrd-tools; scripts/test_deps.sh does it as root)")


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """||s * ours - ref|| / ||ref|| with the least-squares scale s (the two FFTs normalise
    differently: ours is unitary, the C++ one is not)."""
    s = float((ours * ref).sum() / (ours * ours).sum())
    return float(np.linalg.norm(s * ours - ref) / np.linalg.norm(ref))


@needs_ismrmrd_tools
def test_shepp_logan_matches_ismrmrd_cpp_recon(server, tmp_path):
    f = tmp_path / "shepp_logan.h5"
    # 64 x 64, 8 coils, readout oversampling 2, noise 0.05, a noise readout first (-C)
    subprocess.run([GENERATE, "-m", "64", "-c", "8", "-C", "-o", str(f)], check=True, capture_output=True,
                   timeout=60)
    subprocess.run([RECON, str(f)], check=True, capture_output=True, timeout=60)
    with h5py.File(f, "r") as h:
        cpp = np.asarray(h["dataset/cpp/data"])[0, 0, 0]  # (y, x), float magnitude
    ds = ismrmrd.Dataset(str(f), "dataset", False)
    header = ds.read_xml_header().decode()
    acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    ds.close()
    assert acqs[0].is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) and acqs[0].data.shape == (8, 128)
    # the generator leaves the slice geometry empty; a scanner fills it in (axial here)
    for a in acqs:
        a.read_dir[:], a.phase_dir[:], a.slice_dir[:] = (1, 0, 0), (0, 1, 0), (0, 0, 1)
    res = send_stream("127.0.0.1", server.port,
                      scanner_messages(acquisitions=acqs, header=header, config="passthrough"), timeout_s=60)
    assert res.closed_cleanly and res.error is None, res.texts
    orig, derived = by_role(res)
    assert not derived
    ((recon,),) = orig.values()
    h = recon.getHead()
    assert tuple(h.matrix_size) == (64, 64, 1)
    assert np.allclose(h.field_of_view[:2], (300.0, 300.0))  # the recon FOV, oversampling removed
    ours = recon.data[0, 0].astype(np.float64)
    assert ours.shape == cpp.shape
    err = relative_error(ours, cpp)
    assert err < 1e-5, err  # measured 9e-8 (float32 FFTs)
    # the check is sharp: a one-pixel shift or a flip of either axis gives 0.56-0.71
    for wrong in (np.roll(ours, 1, axis=1), ours[:, ::-1], ours[::-1]):
        assert relative_error(wrong, cpp) > 0.3


def test_analytic_kspace_of_an_off_centre_blob_comes_back_at_its_lps_point(server):
    """3D Cartesian encoding on an oblique slab, k-space written from the Fourier transform of
    a Gaussian: exp(-pi^2 * 2 sigma^2 |k|^2) * exp(-2 pi i k.x0) per axis, x0 the blob centre
    relative to the slab centre (the readouts' ``position``) along read, phase and slice."""
    n = np.array([40, 32, 24])  # recon matrix (read, phase, slice)
    fov = np.array([120.0, 112.0, 96.0])  # mm
    os_ = 2  # readout oversampling, removed by the reconstruction
    d = fov / n
    direction = rotation(10, -20, 30)  # columns: read, phase, slice directions in LPS
    centre = np.array([5.0, -12.0, 20.0])  # LPS (mm)
    x0 = np.array([21.0, -15.0, 12.0])  # mm along read, phase, slice
    sigma = 4.0  # mm
    k_read = (np.arange(n[0] * os_) - n[0] * os_ // 2) / (fov[0] * os_)
    k_phase = (np.arange(n[1]) - n[1] // 2) / fov[1]
    k_slice = (np.arange(n[2]) - n[2] // 2) / fov[2]

    def ft(k, c):
        return np.exp(-2 * (np.pi * sigma * k) ** 2) * np.exp(-2j * np.pi * k * c)

    line_read = ft(k_read, x0[0])
    acqs = []
    for kz in range(n[2]):
        for ky in range(n[1]):
            line = 1000.0 * line_read * ft(k_phase[ky], x0[1]) * ft(k_slice[kz], x0[2])
            a = ismrmrd.Acquisition.from_array(np.stack([line, 0.5j * line]).astype(np.complex64))  # 2 coils
            a.version = 1
            a.center_sample = n[0] * os_ // 2
            a.position[:] = centre
            a.read_dir[:], a.phase_dir[:], a.slice_dir[:] = direction.T
            a.idx.kspace_encode_step_1, a.idx.kspace_encode_step_2 = ky, kz
            acqs.append(a)
    header = make_header_xml(protocol_name="t1_blob", ti_ms=900, matrix=tuple(int(v) for v in n),
                             fov_mm=tuple(fov), encoded_matrix=(int(n[0] * os_), int(n[1]), int(n[2])),
                             encoded_fov_mm=(fov[0] * os_, fov[1], fov[2]), slices=1)
    res = send_stream("127.0.0.1", server.port, scanner_messages(acquisitions=acqs, header=header,
                                                                 config="passthrough"), timeout_s=60)
    assert res.closed_cleanly and res.error is None, res.texts
    ((img,),) = by_role(res)[0].values()
    h = img.getHead()
    assert tuple(h.matrix_size) == tuple(n)
    vol = img.data[0].astype(np.float64)  # (z, y, x)
    k, j, i = np.indices(vol.shape)
    w = vol / vol.sum()
    got = pixel_lps(h, (w * i).sum(), (w * j).sum(), (w * k).sum())  # from the header alone
    expected = centre + direction @ x0
    off_voxels = direction.T @ (got - expected) / d
    # A sign error along any axis puts the blob 2 x0 away (7 to 8 voxels); swapped axes or a
    # wrong field of view move it by several voxels. Measured: +0.500 voxel on each axis, the
    # FFT centring convention (zero phase at pixel n/2; the geometry puts the field-of-view
    # centre between pixels (n-1)/2). See the report of issue 23.
    assert np.all(np.abs(off_voxels) <= 0.55), off_voxels
    # and its width: the blob's sigma along each axis
    for axis, idx in ((0, i), (1, j), (2, k)):
        mean = (w * idx).sum()
        sd_mm = np.sqrt((w * (idx - mean) ** 2).sum()) * d[axis]
        assert sd_mm == pytest.approx(sigma, rel=0.1), (axis, sd_mm)
