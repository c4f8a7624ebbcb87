"""In-graph spectral features for the demo audio models, plus synthetic sound generators.

``LogBandEnergies`` turns raw waveforms into log band energies with nothing but matrix
products, so the same arithmetic runs in NumPy (training) and in ONNX (MatMul, Mul, Add,
Log, Reshape): a buyer sends the raw waveform and never has to reproduce a feature pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, TransformerMixin

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

SAMPLE_RATE = 8000
CLIP_SAMPLES = 1024
_EPS = 1e-6


def _hz_to_mel(f: F64) -> F64:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: F64) -> F64:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


class LogBandEnergies(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Hann-windowed frames -> power spectrum -> band energies -> log -> mean over frames.

    Output columns: the log band energies minus their mean (spectral shape, independent of
    gain), followed by one column holding that mean (overall loudness).
    """

    def __init__(
        self,
        frame: int = 256,
        sample_rate: int = SAMPLE_RATE,
        fmin: float = 0.0,
        fmax: float = 4000.0,
        n_bands: int = 20,
        scale: str = "mel",
    ) -> None:
        self.frame = frame
        self.sample_rate = sample_rate
        self.fmin = fmin
        self.fmax = fmax
        self.n_bands = n_bands
        self.scale = scale

    def fit(self, x: Any, y: Any = None) -> LogBandEnergies:
        n_samples = int(np.asarray(x).shape[1])
        if n_samples % self.frame:
            raise ValueError(f"clip length {n_samples} is not a multiple of frame {self.frame}")
        hz_per_bin = self.sample_rate / self.frame
        k_lo = max(0, int(np.floor(self.fmin / hz_per_bin)))
        k_hi = min(self.frame // 2, int(np.ceil(self.fmax / hz_per_bin)))
        bins = np.arange(k_lo, k_hi + 1)
        t = np.arange(self.frame)
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * t / self.frame)
        angle = 2.0 * np.pi * np.outer(t, bins) / self.frame
        self.cos_: F32 = (window[:, None] * np.cos(angle)).astype(np.float32)
        self.sin_: F32 = (window[:, None] * np.sin(angle)).astype(np.float32)
        # Band edges in bin indices, strictly increasing so that no band is empty.
        lo, hi = float(bins[0] * hz_per_bin), float(bins[-1] * hz_per_bin)
        if self.scale == "mel":
            edges_hz = _mel_to_hz(
                np.linspace(_hz_to_mel(np.array(lo)), _hz_to_mel(np.array(hi)), self.n_bands + 1)
            )
        else:
            edges_hz = np.linspace(lo, hi, self.n_bands + 1)
        edges = np.round(edges_hz / hz_per_bin).astype(int) - k_lo
        for i in range(1, len(edges)):
            edges[i] = max(edges[i], edges[i - 1] + 1)
        edges = np.minimum(edges, len(bins))
        bands = np.zeros((len(bins), self.n_bands), dtype=np.float32)
        for b in range(self.n_bands):
            start, stop = int(edges[b]), max(int(edges[b + 1]), int(edges[b]) + 1)
            bands[start:stop, b] = 1.0
        self.bands_: F32 = bands
        self.n_frames_ = n_samples // self.frame
        n_out = self.n_bands + 1
        post = np.zeros((self.n_frames_ * self.n_bands, n_out), dtype=np.float64)
        centre = np.eye(self.n_bands) - 1.0 / self.n_bands
        for f in range(self.n_frames_):
            rows = slice(f * self.n_bands, (f + 1) * self.n_bands)
            post[rows, : self.n_bands] = centre / self.n_frames_
            post[rows, self.n_bands] = 1.0 / (self.n_frames_ * self.n_bands)
        self.post_: F32 = post.astype(np.float32)
        self.n_features_in_ = n_samples
        return self

    def transform(self, x: Any) -> F32:
        frames = np.asarray(x, dtype=np.float32).reshape(-1, self.frame)
        re = frames @ self.cos_
        im = frames @ self.sin_
        energy = np.log((re * re + im * im) @ self.bands_ + np.float32(_EPS))
        flat = energy.reshape(-1, self.n_frames_ * self.n_bands)
        out: F32 = (flat @ self.post_).astype(np.float32)
        return out


def _shape_calculator(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    op = operator.raw_operator
    batch = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([batch, op.n_bands + 1])


def _converter(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto

    op = operator.raw_operator
    source = operator.inputs[0].full_name

    def const(name: str, arr: npt.NDArray[Any], dtype: int = TensorProto.FLOAT) -> str:
        unique = scope.get_unique_variable_name(name)
        container.add_initializer(unique, dtype, list(arr.shape), arr.flatten().tolist())
        return str(unique)

    def node(op_type: str, inputs: list[str], output: str | None = None) -> str:
        out = output or scope.get_unique_variable_name(op_type.lower())
        container.add_node(op_type, inputs, out, name=scope.get_unique_operator_name(op_type))
        return str(out)

    frame_shape = const("frame_shape", np.array([-1, op.frame], dtype=np.int64), TensorProto.INT64)
    frames = node("Reshape", [source, frame_shape])
    re = node("MatMul", [frames, const("dft_cos", op.cos_)])
    im = node("MatMul", [frames, const("dft_sin", op.sin_)])
    power = node("Add", [node("Mul", [re, re]), node("Mul", [im, im])])
    banded = node("MatMul", [power, const("band_matrix", op.bands_)])
    logged = node("Log", [node("Add", [banded, const("eps", np.array([_EPS], np.float32))])])
    flat_shape = const(
        "flat_shape", np.array([-1, op.n_frames_ * op.n_bands], dtype=np.int64), TensorProto.INT64
    )
    flat = node("Reshape", [logged, flat_shape])
    node("MatMul", [flat, const("frame_pool", op.post_)], operator.outputs[0].full_name)


_registered = False


def register_converter() -> None:
    """Teach skl2onnx how to convert LogBandEnergies (idempotent)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter

    update_registered_converter(
        LogBandEnergies, "CyxwizLogBandEnergies", _shape_calculator, _converter
    )
    _registered = True


# ---------------------------------------------------------------------------------------------
# Synthetic sounds (8 kHz, 1024 samples = 128 ms)

_T = np.arange(CLIP_SAMPLES) / SAMPLE_RATE
Rng = np.random.Generator


def _tone(freq: float | F64, phase: float = 0.0) -> F64:
    if isinstance(freq, np.ndarray):
        return np.asarray(np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE + phase))
    return np.asarray(np.sin(2 * np.pi * freq * _T + phase))


def _band_noise(rng: Rng, lo: float, hi: float) -> F64:
    spec = np.fft.rfft(rng.normal(size=CLIP_SAMPLES))
    freqs = np.fft.rfftfreq(CLIP_SAMPLES, 1 / SAMPLE_RATE)
    spec[(freqs < lo) | (freqs > hi)] = 0
    out = np.fft.irfft(spec, n=CLIP_SAMPLES)
    return np.asarray(out / (np.std(out) + 1e-9))


def _harmonics(rng: Rng, f0: float, amps: list[float] | F64, vibrato: float = 0.0) -> F64:
    out = np.zeros(CLIP_SAMPLES)
    inst = f0 * (1 + vibrato * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * _T))
    for k, amp in enumerate(amps, start=1):
        if f0 * k >= SAMPLE_RATE / 2 - 100:
            break
        out += amp * _tone(inst * k, rng.uniform(0, 2 * np.pi))
    return out


def _finish(rng: Rng, x: F64, snr_db: tuple[float, float] = (8.0, 30.0)) -> F32:
    x = x / (np.std(x) + 1e-9)
    noise = rng.normal(size=CLIP_SAMPLES) * 10 ** (-rng.uniform(*snr_db) / 20)
    y = (x + noise) * rng.uniform(0.05, 0.5)
    return y.astype(np.float32)


def _siren(rng: Rng) -> F64:
    f0, dev, fm = rng.uniform(700, 1100), rng.uniform(150, 400), rng.uniform(3, 9)
    freq = f0 + dev * np.sin(2 * np.pi * fm * _T + rng.uniform(0, 2 * np.pi))
    return _tone(freq) + 0.2 * _tone(3 * freq)


def _car_horn(rng: Rng) -> F64:
    f0 = rng.uniform(350, 520)
    return _harmonics(rng, f0, [1.0, 0.7, 0.5, 0.35, 0.25, 0.15]) + 0.6 * _harmonics(
        rng, f0 * rng.uniform(1.24, 1.27), [1.0, 0.5, 0.3]
    )


def _dog_bark(rng: Rng) -> F64:
    onset = rng.uniform(0.0, 0.05)
    env = np.clip((_T - onset) / 0.008, 0, 1) * np.exp(-np.clip(_T - onset, 0, None) / 0.04)
    f0 = rng.uniform(350, 800)
    voiced = _harmonics(rng, f0, [1.0, 0.8, 0.6, 0.4, 0.2])
    return env * (voiced + 0.8 * _band_noise(rng, 500, 2500))


def _engine_idle(rng: Rng) -> F64:
    f0 = rng.uniform(25, 60)
    amps = np.power(np.arange(1, 25, dtype=np.float64), -0.7)
    am = 1 + 0.5 * np.sin(2 * np.pi * f0 * 2 * _T)
    return am * _harmonics(rng, f0, amps) + 0.2 * _band_noise(rng, 20, 400)


def _rain(rng: Rng) -> F64:
    base = _band_noise(rng, rng.uniform(200, 800), rng.uniform(2500, 3990))
    drops = np.zeros(CLIP_SAMPLES)
    for pos in rng.integers(0, CLIP_SAMPLES - 40, rng.integers(3, 12)):
        drops[pos : pos + 40] += rng.uniform(1, 3) * np.exp(-np.arange(40) / 6.0)
    return base + drops * _band_noise(rng, 1500, 3990)


URBAN_SOUNDS: dict[str, Callable[[Rng], F64]] = {
    "car_horn": _car_horn,
    "dog_bark": _dog_bark,
    "engine_idle": _engine_idle,
    "rain": _rain,
    "siren": _siren,
}


def _rotation(rng: Rng, amps: list[float], line_hum: float = 0.3) -> tuple[float, F64]:
    fr = rng.uniform(24, 50)
    x = _harmonics(rng, fr, amps) + line_hum * _tone(rng.choice([100.0, 120.0]))
    return fr, x + 0.1 * _band_noise(rng, 20, 3990)


def _healthy(rng: Rng) -> F64:
    return _rotation(rng, [0.3, 0.1, 0.05])[1]


def _imbalance(rng: Rng) -> F64:
    return _rotation(rng, [1.5, 0.2, 0.05])[1]


def _misalignment(rng: Rng) -> F64:
    return _rotation(rng, [0.5, 1.3, 0.45, 0.1])[1]


def _looseness(rng: Rng) -> F64:
    fr, x = _rotation(rng, [0.5, 0.45, 0.45, 0.4, 0.4, 0.35, 0.35, 0.3, 0.3, 0.3])
    return x + 0.4 * _tone(fr / 2)


def _bearing_fault(rng: Rng) -> F64:
    fr, x = _rotation(rng, [0.3, 0.1, 0.05])
    bpfo = fr * rng.uniform(3.0, 4.5)
    resonance = rng.uniform(2000, 3500)
    ring = np.exp(-np.arange(120) / 18.0) * np.sin(2 * np.pi * resonance * np.arange(120) / 8000)
    impulses = np.zeros(CLIP_SAMPLES)
    step = SAMPLE_RATE / bpfo
    pos = rng.uniform(0, step)
    while pos < CLIP_SAMPLES:
        impulses[int(pos)] = rng.uniform(0.6, 1.4)
        pos += step
    return x + rng.uniform(1.0, 2.5) * np.convolve(impulses, ring)[:CLIP_SAMPLES]


MOTOR_STATES: dict[str, Callable[[Rng], F64]] = {
    "bearing_fault": _bearing_fault,
    "healthy": _healthy,
    "imbalance": _imbalance,
    "looseness": _looseness,
    "misalignment": _misalignment,
}


def _pitch(rng: Rng) -> float:
    return float(196.0 * 2 ** (rng.integers(0, 25) / 12) * rng.uniform(0.99, 1.01))


def _flute(rng: Rng) -> F64:
    return _harmonics(rng, _pitch(rng), [1.0, 0.25, 0.08], 0.006) + 0.15 * _band_noise(
        rng, 1500, 3990
    )


def _clarinet(rng: Rng) -> F64:
    return _harmonics(rng, _pitch(rng), [1.0, 0.05, 0.45, 0.04, 0.3, 0.03, 0.2, 0.02, 0.14])


def _violin(rng: Rng) -> F64:
    amps = np.power(np.arange(1, 16, dtype=np.float64), -1.0)
    return _harmonics(rng, _pitch(rng), amps, 0.012) + 0.05 * _band_noise(rng, 2000, 3990)


def _guitar(rng: Rng) -> F64:
    f0, out = _pitch(rng), np.zeros(CLIP_SAMPLES)
    onset = rng.uniform(0, 0.03)
    for k in range(1, 12):
        if f0 * k > 3900:
            break
        decay = np.exp(-np.clip(_T - onset, 0, None) * (8 + 6 * k)) * (onset <= _T)
        out += decay / k**1.2 * _tone(f0 * k, rng.uniform(0, 2 * np.pi))
    return out


def _trumpet(rng: Rng) -> F64:
    return _harmonics(rng, _pitch(rng), [0.5, 0.8, 1.0, 0.9, 0.7, 0.5, 0.35, 0.2, 0.1], 0.004)


INSTRUMENTS: dict[str, Callable[[Rng], F64]] = {
    "clarinet": _clarinet,
    "flute": _flute,
    "guitar": _guitar,
    "trumpet": _trumpet,
    "violin": _violin,
}

_DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
_DTMF_HIGH = (1209.0, 1336.0, 1477.0)
DTMF_KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#")


def dtmf(rng: Rng, key: str) -> F64:
    if key == "none":
        return _band_noise(rng, 300, 3400) * rng.uniform(0.5, 1.5)
    i = DTMF_KEYS.index(key)
    lo, hi = _DTMF_LOW[i // 3], _DTMF_HIGH[i % 3]
    twist = rng.uniform(0.7, 1.3)
    return _tone(lo * rng.uniform(0.985, 1.015), rng.uniform(0, 6.3)) + twist * _tone(
        hi * rng.uniform(0.985, 1.015), rng.uniform(0, 6.3)
    )


def make_clips(
    rng: Rng,
    generators: Mapping[str, Callable[[Rng], F64]],
    n_per_class: int,
    snr_db: tuple[float, float] = (8.0, 30.0),
) -> tuple[F32, list[str]]:
    """n_per_class clips of every class, shuffled, as float32 rows and string labels."""
    labels = [name for name in generators for _ in range(n_per_class)]
    order = rng.permutation(len(labels))
    labels = [labels[i] for i in order]
    clips = np.stack([_finish(rng, generators[name](rng), snr_db) for name in labels])
    return clips, labels
