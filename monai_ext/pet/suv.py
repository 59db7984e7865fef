"""Standardised uptake values (SUV) from a PET DICOM header: body weight and lean body mass (Hume formula).

    SUV = C / (A_inj(t_scan) / M),     A_inj(t_scan) = A_inj * 2^(-(t_scan - t_inj) / T_1/2),

with ``C`` the activity concentration (Bq/mL, i.e. Bq/g for a tissue density of 1 g/mL), ``A_inj`` the injected
activity (Bq) at the injection time ``t_inj`` and ``M`` a mass in g: the body weight for SUVbw, the lean body mass
for SUVlbm. The injected activity is decay-corrected to the time the image is decay-corrected to: the series time
when ``DecayCorrection`` is ``START`` (the usual case), and the injection time (no correction) when it is ``ADMIN``.

Lean body mass by Hume (1966), weight ``W`` in kg, height ``H`` in cm, LBM in kg:

    male:   LBM = 0.32810 W + 0.33929 H - 29.5336
    female: LBM = 0.29569 W + 0.41813 H - 43.2933

References:
    R. Hume, "Prediction of lean body mass from height and weight", J. Clin. Pathol. 19(4), 389-391 (1966).
    DICOM PS3.3 C.8.9.1 (PET Series) and C.8.9.2 (PET Isotope) modules; QIBA FDG-PET/CT profile, SUV computation.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

__all__ = ["SUVFactors", "hume_lean_body_mass", "suv_factors", "dicom_time_seconds"]


def hume_lean_body_mass(weight_kg: float, height_cm: float, sex: str) -> float:
    """Lean body mass in kg by the Hume (1966) formula (module docstring).

    Raises:
        ValueError: a non-positive weight or height, a sex other than ``M``/``F``, or a non-positive result.
    """
    if weight_kg <= 0 or height_cm <= 0:
        raise ValueError(f"weight and height must be positive, got {weight_kg} kg and {height_cm} cm.")
    sex = str(sex).strip().upper()[:1]
    if sex == "M":
        lbm = 0.32810 * weight_kg + 0.33929 * height_cm - 29.5336
    elif sex == "F":
        lbm = 0.29569 * weight_kg + 0.41813 * height_cm - 43.2933
    else:
        raise ValueError(f"the Hume formula needs the patient's sex 'M' or 'F', got {sex!r}.")
    if lbm <= 0:
        raise ValueError(f"the Hume formula gives a non-positive lean body mass ({lbm:.1f} kg) for {weight_kg} kg, {height_cm} cm.")
    return lbm


def dicom_time_seconds(value: str, date: str | None = None) -> float:
    """Seconds of a DICOM TM (``HHMMSS[.ffffff]``), plus the DA date (``YYYYMMDD``) as seconds since 1970 if given.

    Raises:
        ValueError: a malformed time or date.
    """
    text = str(value).strip()
    try:
        hours, minutes = int(text[0:2]), int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError as err:
        raise ValueError(f"malformed DICOM time {value!r}.") from err
    total = 3600.0 * hours + 60.0 * minutes + seconds
    if date:
        try:
            day = _dt.datetime.strptime(str(date).strip()[:8], "%Y%m%d").replace(tzinfo=_dt.timezone.utc)
        except ValueError as err:
            raise ValueError(f"malformed DICOM date {date!r}.") from err
        total += day.timestamp()
    return total


@dataclass(frozen=True)
class SUVFactors:
    """Multipliers from Bq/mL to SUV.

    Args:
        body_weight: SUVbw factor, ``W[g] / A(t_scan)[Bq]``.
        lean_body_mass: SUVlbm factor (``None`` when the height or sex is missing).
        decayed_dose_bq: injected activity decay-corrected to the image reference time.
        weight_kg: patient weight; ``lbm_kg``: Hume lean body mass (or ``None``).
    """

    body_weight: float
    lean_body_mass: float | None
    decayed_dose_bq: float
    weight_kg: float
    lbm_kg: float | None


def _radiopharmaceutical(ds):
    seq = getattr(ds, "RadiopharmaceuticalInformationSequence", None)
    if not seq:
        raise ValueError("the PET header lacks the RadiopharmaceuticalInformationSequence (injected dose and time).")
    return seq[0]


def suv_factors(ds) -> SUVFactors:
    """SUV factors from a PET DICOM dataset (``pydicom.Dataset``), following the module docstring.

    Raises:
        ValueError: missing or non-positive patient weight, missing ``Units`` or units other than ``BQML``, missing injected dose, half
            life or times, or an injection after the reference time.
    """
    weight = getattr(ds, "PatientWeight", None)
    if weight in (None, "") or float(weight) <= 0:
        raise ValueError("PatientWeight (0010,1030) is missing or not positive: SUV needs the patient's weight.")
    weight = float(weight)
    units = getattr(ds, "Units", None)
    if units in (None, ""):
        raise ValueError(
            "the PET series has no Units (0054,1001), so its pixel values cannot be taken as Bq/mL for SUV; deblur the raw "
            "values instead (suv: null) or fix the header."
        )
    units = str(units).upper()
    if units != "BQML":
        raise ValueError(f"SUV conversion needs pixel values in Bq/mL (Units BQML), the series has Units {units!r}.")
    info = _radiopharmaceutical(ds)
    dose = getattr(info, "RadionuclideTotalDose", None)
    half_life = getattr(info, "RadionuclideHalfLife", None)
    if dose in (None, "") or float(dose) <= 0:
        raise ValueError("RadionuclideTotalDose (0018,1074) is missing or not positive.")
    if half_life in (None, "") or float(half_life) <= 0:
        raise ValueError("RadionuclideHalfLife (0018,1075) is missing or not positive.")
    correction = str(getattr(ds, "DecayCorrection", "START")).upper()
    decayed = float(dose)
    if correction == "START":
        start_datetime = str(getattr(info, "RadiopharmaceuticalStartDateTime", "") or "")
        date = getattr(ds, "SeriesDate", None) or getattr(ds, "AcquisitionDate", None) or start_datetime[:8] or None
        if start_datetime:
            injected = dicom_time_seconds(start_datetime[8:], start_datetime[:8])
        elif getattr(info, "RadiopharmaceuticalStartTime", None):
            injected = dicom_time_seconds(info.RadiopharmaceuticalStartTime, date)
        else:
            raise ValueError("the injection time (RadiopharmaceuticalStartTime) is missing.")
        reference_time = getattr(ds, "SeriesTime", None) or getattr(ds, "AcquisitionTime", None)
        if not reference_time:
            raise ValueError("SeriesTime/AcquisitionTime is missing: cannot decay-correct the injected dose.")
        elapsed = dicom_time_seconds(reference_time, date) - injected
        if elapsed < 0:
            raise ValueError(f"the injection is {-elapsed:.0f} s after the series time: check the header times.")
        decayed = float(dose) * 2.0 ** (-elapsed / float(half_life))
    elif correction != "ADMIN":
        raise ValueError(f"unsupported DecayCorrection {correction!r} (expected START or ADMIN).")
    lbm = None
    height = getattr(ds, "PatientSize", None)  # metres
    sex = getattr(ds, "PatientSex", None)
    if height not in (None, "") and float(height) > 0 and sex in ("M", "F"):
        lbm = hume_lean_body_mass(weight, 100.0 * float(height), sex)
    return SUVFactors(
        body_weight=weight * 1000.0 / decayed,
        lean_body_mass=lbm * 1000.0 / decayed if lbm is not None else None,
        decayed_dose_bq=decayed,
        weight_kg=weight,
        lbm_kg=lbm,
    )
