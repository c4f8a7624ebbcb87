"""Synthetic images, tables and time series for the demo models (deterministic per seed).

Every generator draws from a ``numpy.random.Generator`` it is given and returns plain arrays:
features as float64 rows, labels as strings (classification) or floats (regression).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Rng = np.random.Generator
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Table:
    x: F64
    y: F64 | list[str]
    features: tuple[str, ...]
    targets: tuple[str, ...] = ()


def _sigmoid(z: F64) -> F64:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _binary(rng: Rng, logit: F64, yes: str, no: str) -> list[str]:
    return [
        yes if u < p else no for u, p in zip(rng.random(len(logit)), _sigmoid(logit), strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Images


def _pixels(images: list[F64]) -> F64:
    out: F64 = np.asarray(images, dtype=np.float64).round(3)
    return out


SHAPES = ("circle", "cross", "diamond", "square", "triangle")


def shapes(rng: Rng, n: int, size: int = 16) -> tuple[F64, list[str]]:
    """Filled shapes at random positions, sizes and contrasts on a noisy background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    images, labels = [], []
    for _ in range(n):
        label = SHAPES[int(rng.integers(len(SHAPES)))]
        cx, cy = rng.uniform(5.5, size - 5.5, 2)
        r = rng.uniform(3.5, 6.0)
        dx, dy = xx - cx, yy - cy
        if label == "circle":
            mask = dx**2 + dy**2 <= r**2
        elif label == "square":
            mask = np.maximum(abs(dx), abs(dy)) <= r * 0.85
        elif label == "diamond":
            mask = abs(dx) + abs(dy) <= r * 1.2
        elif label == "triangle":
            mask = (dy >= -r) & (dy <= r) & (abs(dx) <= (dy + r) / 2)
        else:
            arm = max(r / 3, 1.0)
            mask = ((abs(dx) <= arm) & (abs(dy) <= r)) | ((abs(dy) <= arm) & (abs(dx) <= r))
        bg = rng.uniform(0.0, 0.25)
        img = bg + mask * rng.uniform(0.5, 1.0 - bg) + rng.normal(0, 0.08, (size, size))
        images.append(np.clip(img, 0, 1).ravel())
        labels.append(label)
    return _pixels(images), labels


TEXTURES = (
    "checkerboard",
    "diagonal_stripes",
    "dots",
    "horizontal_stripes",
    "speckle",
    "vertical_stripes",
)


def textures(rng: Rng, n: int, size: int = 16) -> tuple[F64, list[str]]:
    """Periodic textures with random period, phase and contrast, plus sensor noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    images, labels = [], []
    for _ in range(n):
        label = TEXTURES[int(rng.integers(len(TEXTURES)))]
        p, ph, amp = rng.uniform(3.0, 6.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0)
        if label == "horizontal_stripes":
            z = np.sin(2 * np.pi * yy / p + ph)
        elif label == "vertical_stripes":
            z = np.sin(2 * np.pi * xx / p + ph)
        elif label == "diagonal_stripes":
            sign = 1 if rng.random() < 0.5 else -1
            z = np.sin(2 * np.pi * (xx + sign * yy) / (p * 1.4) + ph)
        elif label == "checkerboard":
            z = np.sign(np.sin(np.pi * xx / p + ph)) * np.sign(np.sin(np.pi * yy / p + ph * 1.3))
        elif label == "dots":
            z = (np.sin(2 * np.pi * xx / p + ph) * np.sin(2 * np.pi * yy / p + 0.7 * ph)) ** 2
            z = 2 * z - 1
        else:
            z = rng.uniform(-1, 1, (size, size))
        img = 0.5 + 0.5 * amp * z + rng.normal(0, 0.12, (size, size))
        images.append(np.clip(img, 0, 1).ravel())
        labels.append(label)
    return _pixels(images), labels


CHECKBOXES = ("checked", "crossed", "empty", "filled")


def _line(img: F64, p0: tuple[float, float], p1: tuple[float, float], value: float) -> None:
    for t in np.linspace(0, 1, 24):
        r = round(float(p0[0] + t * (p1[0] - p0[0])))
        c = round(float(p0[1] + t * (p1[1] - p0[1])))
        if 0 <= r < img.shape[0] and 0 <= c < img.shape[1]:
            img[r, c] = max(img[r, c], value)


def checkboxes(rng: Rng, n: int, size: int = 12) -> tuple[F64, list[str]]:
    """Form checkbox crops: empty, ticked, crossed or filled in, with jitter and scan noise."""
    images, labels = [], []
    for _ in range(n):
        label = CHECKBOXES[int(rng.integers(len(CHECKBOXES)))]
        img = np.zeros((size, size))
        side = int(rng.integers(7, 11))
        top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
        bottom, right = top + side - 1, left + side - 1
        ink = rng.uniform(0.6, 1.0)
        img[top, left : right + 1] = ink
        img[bottom, left : right + 1] = ink
        img[top : bottom + 1, left] = ink
        img[top : bottom + 1, right] = ink
        pen = rng.uniform(0.5, 1.0)
        j = rng.uniform(-1.0, 1.0, 6)
        if label == "checked":
            mid = (top + bottom) / 2
            _line(img, (mid + j[0], left + 2 + j[1]), (bottom - 1.5, left + side / 2.5 + j[2]), pen)
            _line(img, (bottom - 1.5, left + side / 2.5 + j[2]), (top + 1 + j[3], right - 1), pen)
        elif label == "crossed":
            _line(img, (top + 1 + j[0], left + 1), (bottom - 1, right - 1 + j[1]), pen)
            _line(img, (top + 1, right - 1 + j[2]), (bottom - 1 + j[3], left + 1), pen)
        elif label == "filled":
            img[top + 1 : bottom, left + 1 : right] = pen * rng.uniform(0.6, 1.0)
        img += rng.normal(0, 0.08, img.shape)
        images.append(np.clip(img, 0, 1).ravel())
        labels.append(label)
    return _pixels(images), labels


# ---------------------------------------------------------------------------------------------
# Business tables


def credit_applications(rng: Rng, n: int) -> Table:
    age = rng.integers(21, 71, n).astype(float)
    income = np.round(np.exp(rng.normal(np.log(55000), 0.5, n)), -2)
    dti = np.round(rng.beta(2, 5, n) * 0.8, 3)
    util = np.round(rng.beta(2, 3, n), 3)
    late = rng.poisson(0.2 + 2.0 * util**2).astype(float)
    months = np.minimum(np.round(rng.exponential(48, n)), 480)
    loan = np.round(np.exp(rng.normal(np.log(12000), 0.6, n)), -2)
    lines = (rng.poisson(5, n) + 1).astype(float)
    inquiries = rng.poisson(1.0, n).astype(float)
    mortgage = (rng.random(n) < 0.35).astype(float)
    score = (
        -0.6
        + 2.8 * dti
        + 2.0 * util
        + 0.55 * late
        + 0.25 * inquiries
        - 0.012 * (age - 40)
        - 0.5 * np.log(income / 55000)
        + 0.35 * np.log(loan / 12000)
        - 0.004 * months
        - 0.3 * mortgage
    )
    logit = -3.4 + 1.9 * score + rng.normal(0, 0.4, n)
    x = np.column_stack([age, income, dti, util, late, months, loan, lines, inquiries, mortgage])
    names = (
        "age_years",
        "annual_income_usd",
        "debt_to_income",
        "credit_utilization",
        "late_payments_12m",
        "months_at_employer",
        "loan_amount_usd",
        "open_credit_lines",
        "credit_inquiries_6m",
        "has_mortgage",
    )
    return Table(x, _binary(rng, logit, "default", "repaid"), names)


def card_transactions(rng: Rng, n: int) -> Table:
    amount = np.round(np.exp(rng.normal(np.log(45), 1.0, n)), 2)
    avg = np.round(np.exp(rng.normal(np.log(60), 0.5, n)), 2)
    hour = rng.integers(0, 24, n).astype(float)
    distance = np.round(rng.exponential(12, n), 1)
    count24 = rng.poisson(2.5, n).astype(float)
    merchant_risk = np.round(rng.beta(2, 8, n), 3)
    foreign = (rng.random(n) < 0.06).astype(float)
    present = (rng.random(n) < 0.7).astype(float)
    new_device = (rng.random(n) < 0.08).astype(float)
    account_age = np.round(rng.exponential(900, n))
    night = ((hour < 6) | (hour >= 23)).astype(float)
    score = (
        -2.6
        + 1.3 * np.log1p(amount / avg)
        + 1.5 * foreign
        + 1.8 * new_device
        - 1.2 * present
        + 1.0 * night
        + 0.18 * np.sqrt(distance)
        + 0.25 * count24
        + 3.5 * merchant_risk
        - 0.0008 * account_age
    )
    logit = -4.6 + 1.8 * score + rng.normal(0, 0.4, n)
    x = np.column_stack(
        [
            amount,
            avg,
            hour,
            distance,
            count24,
            merchant_risk,
            foreign,
            present,
            new_device,
            account_age,
        ]
    )
    names = (
        "amount_usd",
        "customer_avg_amount_usd",
        "hour_of_day",
        "distance_from_home_km",
        "transactions_24h",
        "merchant_risk_score",
        "is_foreign",
        "card_present",
        "new_device",
        "account_age_days",
    )
    return Table(x, _binary(rng, logit, "fraud", "legit"), names)


def subscription_customers(rng: Rng, n: int) -> Table:
    tenure = rng.integers(1, 73, n).astype(float)
    spend = np.round(rng.gamma(4, 12, n), 2)
    orders90 = rng.poisson(3, n).astype(float)
    since_last = np.round(rng.exponential(20, n))
    tickets = rng.poisson(0.6, n).astype(float)
    discount = np.round(rng.beta(2, 5, n), 3)
    loyalty = (rng.random(n) < 0.4).astype(float)
    delay = np.round(rng.gamma(1.5, 1.0, n), 1)
    sessions = rng.poisson(8, n).astype(float)
    score = (
        -0.8
        - 0.035 * tenure
        - 0.25 * orders90
        + 0.045 * since_last
        + 0.45 * tickets
        + 1.2 * discount
        - 0.8 * loyalty
        + 0.3 * delay
        - 0.08 * sessions
        - 0.004 * spend
    )
    logit = 0.3 + 1.5 * score + rng.normal(0, 0.5, n)
    x = np.column_stack(
        [tenure, spend, orders90, since_last, tickets, discount, loyalty, delay, sessions]
    )
    names = (
        "tenure_months",
        "monthly_spend_usd",
        "orders_last_90d",
        "days_since_last_order",
        "support_tickets_90d",
        "discount_usage_rate",
        "loyalty_member",
        "avg_delivery_delay_days",
        "app_sessions_30d",
    )
    return Table(x, _binary(rng, logit, "churn", "stay"), names)


def checkout_sessions(rng: Rng, n: int) -> Table:
    duration = np.round(rng.gamma(2, 6, n), 1)
    pages = rng.poisson(4 + duration / 3).astype(float)
    items = (rng.poisson(1.5 + pages / 6, n) + 1).astype(float)
    returning = (rng.random(n) < 0.55).astype(float)
    mobile = (rng.random(n) < 0.6).astype(float)
    coupon = (rng.random(n) < 0.25).astype(float)
    hour = rng.integers(0, 24, n).astype(float)
    paid = (rng.random(n) < 0.3).astype(float)
    past_orders = rng.poisson(2 + 4 * returning).astype(float)
    past_aov = np.round(np.where(returning > 0, rng.gamma(5, 12, n), 0), 2)
    value = (
        items * rng.gamma(12, 2.25, n) * (1 - 0.15 * coupon) * (1 - 0.1 * mobile)
        + 0.25 * past_aov
        + 0.8 * past_orders
        + 3 * np.sin(2 * np.pi * hour / 24)
    )
    x = np.column_stack(
        [duration, pages, items, returning, mobile, coupon, hour, paid, past_orders, past_aov]
    )
    names = (
        "session_minutes",
        "pages_viewed",
        "items_in_cart",
        "returning_customer",
        "mobile_device",
        "coupon_applied",
        "hour_of_day",
        "paid_traffic",
        "past_orders",
        "past_avg_order_usd",
    )
    return Table(x, np.round(value, 2), names, ("order_value_usd",))


def players(rng: Rng, n: int) -> Table:
    since_install = rng.integers(1, 366, n).astype(float)
    sessions7 = rng.poisson(6, n).astype(float)
    session_min = np.round(rng.gamma(3, 8, n), 1)
    level = np.minimum(1 + np.round(np.sqrt(since_install) * rng.uniform(0.5, 3, n)), 100)
    win_rate = np.round(rng.beta(5, 5, n), 2)
    spend = np.round(np.where(rng.random(n) < 0.25, rng.gamma(1.5, 12, n), 0), 2)
    friends = rng.poisson(2, n).astype(float)
    since_login = np.round(rng.exponential(3, n))
    guild = (rng.random(n) < 0.35).astype(float)
    crashes = rng.poisson(0.3, n).astype(float)
    score = (
        -0.5
        - 0.28 * sessions7
        + 0.35 * since_login
        - 0.25 * friends
        - 0.9 * guild
        - 0.03 * spend
        + 0.6 * crashes
        - 2.0 * (win_rate - 0.5)
        - 0.01 * level
        - 0.02 * session_min
    )
    logit = 1.1 + 1.5 * score + rng.normal(0, 0.5, n)
    x = np.column_stack(
        [
            since_install,
            sessions7,
            session_min,
            level,
            win_rate,
            spend,
            friends,
            since_login,
            guild,
            crashes,
        ]
    )
    names = (
        "days_since_install",
        "sessions_last_7d",
        "avg_session_minutes",
        "player_level",
        "win_rate_last_20",
        "lifetime_spend_usd",
        "friends_in_game",
        "days_since_last_login",
        "guild_member",
        "crash_reports_7d",
    )
    return Table(x, _binary(rng, logit, "churn", "retained"), names)


def matches(rng: Rng, n: int) -> Table:
    rating_a = rng.normal(1500, 250, n)
    rating_diff = np.round(rng.normal(0, 120, n))
    party_a = rng.integers(1, 6, n).astype(float)
    party_b = rng.integers(1, 6, n).astype(float)
    ping_a = np.round(rng.gamma(4, 12, n))
    ping_b = np.round(rng.gamma(4, 12, n))
    form_a = np.round(rng.beta(5, 5, n), 2)
    form_b = np.round(rng.beta(5, 5, n), 2)
    hours_a = np.round(rng.gamma(3, 150, n))
    hours_b = np.round(rng.gamma(3, 150, n))
    logit = (
        np.log(10) * rating_diff / 400
        + 0.08 * (party_a - party_b)
        - 0.006 * (ping_a - ping_b)
        + 1.2 * (form_a - form_b)
        + 0.0004 * (hours_a - hours_b)
        + rng.normal(0, 0.3, n)
    )
    x = np.column_stack(
        [
            np.round(rating_a),
            rating_diff,
            party_a,
            party_b,
            ping_a,
            ping_b,
            form_a,
            form_b,
            hours_a,
            hours_b,
        ]
    )
    names = (
        "team_a_mmr",
        "mmr_difference",
        "team_a_party_size",
        "team_b_party_size",
        "team_a_avg_ping_ms",
        "team_b_avg_ping_ms",
        "team_a_recent_win_rate",
        "team_b_recent_win_rate",
        "team_a_avg_hours_played",
        "team_b_avg_hours_played",
    )
    return Table(x, _binary(rng, logit, "team_a", "team_b"), names)


def employees(rng: Rng, n: int) -> Table:
    age = rng.integers(21, 63, n).astype(float)
    years = np.minimum(np.round(rng.exponential(5, n)), age - 20)
    income = np.round(np.exp(rng.normal(np.log(5200), 0.4, n)) + 60 * years, -1)
    overtime = np.round(rng.gamma(1.2, 8, n))
    satisfaction = rng.integers(1, 5, n).astype(float)
    rating = rng.integers(2, 5, n).astype(float)
    distance = np.round(rng.exponential(12, n), 1)
    promotions = rng.poisson(0.15 * np.minimum(years, 5) + 0.1).astype(float)
    training = np.round(rng.gamma(2, 10, n))
    remote = rng.integers(0, 6, n).astype(float)
    score = (
        -1.0
        - 0.045 * (age - 35)
        - 0.12 * years
        - 0.00025 * (income - 5200)
        + 0.06 * overtime
        - 0.55 * (satisfaction - 2.5)
        - 0.45 * promotions
        + 0.02 * distance
        - 0.015 * training
        - 0.15 * remote
        + 0.3 * (rating == 4)
    )
    logit = 0.7 + 1.8 * score + rng.normal(0, 0.4, n)
    x = np.column_stack(
        [age, years, income, overtime, satisfaction, rating, distance, promotions, training, remote]
    )
    names = (
        "age_years",
        "years_at_company",
        "monthly_income_usd",
        "overtime_hours_month",
        "job_satisfaction_1_4",
        "performance_rating_1_4",
        "commute_km",
        "promotions_last_5y",
        "training_hours_last_year",
        "remote_days_per_week",
    )
    return Table(x, _binary(rng, logit, "leaves", "stays"), names)


def houses(rng: Rng, n: int) -> Table:
    area = np.round(rng.gamma(9, 14, n))
    bedrooms = np.clip(np.round(area / 35 + rng.normal(0, 0.8, n)), 1, 7)
    bathrooms = np.clip(np.round(bedrooms / 2 + rng.normal(0.3, 0.5, n)), 1, 5)
    lot = np.round(area * rng.uniform(1.2, 6, n))
    year = rng.integers(1920, 2025, n).astype(float)
    distance = np.round(rng.gamma(2, 6, n), 1)
    school = rng.integers(1, 11, n).astype(float)
    garage = (rng.random(n) < 0.6).astype(float)
    renovated = (rng.random(n) < 0.25).astype(float)
    crime = np.round(rng.gamma(2, 15, n), 1)
    price = (
        2.1 * area * (1 + 0.04 * school) * np.exp(-distance / 30)
        + 0.04 * lot
        + 12 * bathrooms
        + 25 * garage
        + 30 * renovated
        + 0.9 * np.maximum(year - 1960, 0)
        - 0.8 * crime
        + 60
    ) * np.exp(rng.normal(0, 0.1, n))
    x = np.column_stack(
        [area, bedrooms, bathrooms, lot, year, distance, school, garage, renovated, crime]
    )
    names = (
        "living_area_m2",
        "bedrooms",
        "bathrooms",
        "lot_size_m2",
        "year_built",
        "distance_to_centre_km",
        "school_rating_1_10",
        "has_garage",
        "renovated_10y",
        "crime_index",
    )
    return Table(x, np.round(price, 1), names, ("price_kusd",))


def buildings(rng: Rng, n: int) -> Table:
    compactness = np.round(rng.uniform(0.62, 0.98, n), 2)
    surface = np.round(500 + (1 - compactness) * 900 + rng.normal(0, 20, n), 1)
    wall = np.round(rng.uniform(245, 416, n), 1)
    height = np.where(rng.random(n) < 0.5, 3.5, 7.0)
    roof = np.round(np.where(height > 5, rng.uniform(110, 150, n), rng.uniform(200, 240, n)), 1)
    orientation = rng.integers(2, 6, n).astype(float)
    glazing = rng.choice([0.0, 0.1, 0.25, 0.4], n)
    u_value = np.round(rng.uniform(0.15, 0.6, n), 2)
    outdoor = np.round(rng.uniform(-12, 4, n), 1)
    heating = (
        6
        + 22 * (height > 5)
        + 35 * (1 - compactness)
        + 30 * glazing
        + 28 * u_value
        - 0.9 * outdoor
        + 0.01 * (wall - 300)
        + rng.normal(0, 1.0, n)
    )
    cooling = (
        10
        + 16 * (height > 5)
        + 25 * (1 - compactness)
        + 22 * glazing
        + 5 * u_value
        + 0.6 * (orientation == 4)
        + 0.01 * (wall - 300)
        + rng.normal(0, 1.2, n)
    )
    x = np.column_stack(
        [compactness, surface, wall, roof, height, orientation, glazing, u_value, outdoor]
    )
    names = (
        "relative_compactness",
        "surface_area_m2",
        "wall_area_m2",
        "roof_area_m2",
        "overall_height_m",
        "orientation_2_5",
        "glazing_area_ratio",
        "wall_u_value",
        "design_outdoor_temp_c",
    )
    y = np.column_stack([heating, cooling])
    return Table(x, np.round(y, 2), names, ("heating_load_kwh_m2", "cooling_load_kwh_m2"))


def deliveries(rng: Rng, n: int) -> Table:
    distance = np.round(rng.gamma(2.2, 1.6, n), 2)
    items = (rng.poisson(2.5, n) + 1).astype(float)
    hour = rng.integers(10, 24, n).astype(float)
    weekend = (rng.random(n) < 2 / 7).astype(float)
    rain = (rng.random(n) < 0.2).astype(float)
    prep = np.round(rng.gamma(4, 3.5, n), 1)
    experience = np.round(rng.exponential(14, n))
    traffic = np.round(
        np.clip(rng.normal(1 + 0.4 * np.isin(hour, [12, 13, 18, 19, 20]), 0.2), 0.6, 2.2), 2
    )
    bike = (rng.random(n) < 0.45).astype(float)
    eta = (
        prep
        + distance * (3.2 + 1.2 * bike) * traffic * (1 + 0.25 * rain)
        + 0.6 * items
        + 2.5 * weekend
        + 6 * np.exp(-experience / 6)
        + rng.gamma(2, 1.5, n)
    )
    x = np.column_stack([distance, items, hour, weekend, rain, prep, experience, traffic, bike])
    names = (
        "distance_km",
        "items",
        "hour_of_day",
        "is_weekend",
        "is_raining",
        "kitchen_prep_minutes",
        "courier_experience_months",
        "traffic_index",
        "bike_courier",
    )
    return Table(x, np.round(eta, 1), names, ("eta_minutes",))


# ---------------------------------------------------------------------------------------------
# Science tables

STAR_TYPES = (
    "brown_dwarf",
    "hypergiant",
    "main_sequence",
    "red_dwarf",
    "supergiant",
    "white_dwarf",
)
# (log10 T, sd), (log10 L, sd), (log10 R, sd) per class, roughly the Hertzsprung-Russell diagram.
_STARS = {
    "brown_dwarf": ((3.45, 0.06), (-3.0, 0.5), (-0.9, 0.15)),
    "red_dwarf": ((3.52, 0.05), (-2.2, 0.5), (-0.7, 0.15)),
    "white_dwarf": ((4.0, 0.2), (-3.3, 0.6), (-1.95, 0.12)),
    "main_sequence": ((3.9, 0.25), (1.0, 1.2), (0.35, 0.35)),
    "supergiant": ((3.9, 0.35), (4.8, 0.45), (1.6, 0.5)),
    "hypergiant": ((3.8, 0.35), (5.6, 0.3), (2.9, 0.3)),
}


def stars(rng: Rng, n: int) -> Table:
    labels = [STAR_TYPES[int(i)] for i in rng.integers(0, len(STAR_TYPES), n)]
    rows = []
    for label in labels:
        (t, ts), (lum, ls), (rad, rs) = _STARS[label]
        log_t, log_l, log_r = rng.normal(t, ts), rng.normal(lum, ls), rng.normal(rad, rs)
        abs_mag = 4.83 - 2.5 * log_l + rng.normal(0, 0.3)
        rows.append(
            [
                round(10**log_t),
                float(f"{10**log_l:.4g}"),
                float(f"{10**log_r:.4g}"),
                round(abs_mag, 2),
            ]
        )
    names = ("temperature_k", "luminosity_lsun", "radius_rsun", "absolute_magnitude")
    return Table(np.array(rows), labels, names)


def exoplanets(rng: Rng, n: int) -> Table:
    teff = np.round(rng.uniform(2800, 7500, n))
    r_star = np.round(np.exp(rng.normal(0, 0.35, n)) * (teff / 5800) ** 0.8, 3)
    a_au = np.round(np.exp(rng.uniform(np.log(0.01), np.log(3), n)), 4)
    albedo = np.round(rng.uniform(0.0, 0.7, n), 2)
    t_eq = teff * np.sqrt(r_star * 0.00465047 / (2 * a_au)) * (1 - albedo) ** 0.25
    t_eq = t_eq * np.exp(rng.normal(0, 0.03, n))
    x = np.column_stack([teff, r_star, a_au, albedo])
    names = ("stellar_teff_k", "stellar_radius_rsun", "semi_major_axis_au", "bond_albedo")
    return Table(x, np.round(t_eq, 1), names, ("equilibrium_temp_k",))


# ---------------------------------------------------------------------------------------------
# Time series


@dataclass(frozen=True)
class Windows:
    x_train: F64
    y_train: F64
    x_test: F64
    y_test: F64
    features: tuple[str, ...]
    targets: tuple[str, ...]


def _windows(
    series: list[F64], lags: int, horizon: int, test_frac: float, extra: list[F64] | None = None
) -> tuple[F64, F64, F64, F64]:
    """Sliding windows per series; the last test_frac of every series' targets is held out."""
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    for idx, s in enumerate(series):
        cutoff = int(len(s) * (1 - test_frac))
        for t in range(lags, len(s) - horizon + 1):
            row = s[t - lags : t]
            if extra is not None:
                row = np.concatenate([row, extra[idx][t]])
            target = s[t : t + horizon]
            if t + horizon <= cutoff:
                xs_tr.append(row)
                ys_tr.append(target)
            elif t >= cutoff:
                xs_te.append(row)
                ys_te.append(target)
    return np.array(xs_tr), np.array(ys_tr), np.array(xs_te), np.array(ys_te)


def store_demand(rng: Rng, n_stores: int = 12, days: int = 730) -> Windows:
    d = np.arange(days)
    series = []
    for _ in range(n_stores):
        level = rng.uniform(80, 400)
        weekly = np.array([0.85, 0.9, 0.95, 1.0, 1.15, 1.35, 1.2]) * rng.uniform(0.95, 1.05, 7)
        yearly = 1 + rng.uniform(0.08, 0.2) * np.sin(2 * np.pi * d / 365 + rng.uniform(0, 6.3))
        trend = 1 + rng.uniform(-0.0001, 0.0004) * d
        promo = np.where(rng.random(days) < 0.05, rng.uniform(1.2, 1.6, days), 1.0)
        mean = level * weekly[d % 7] * yearly * trend * promo
        series.append(np.round(mean * np.exp(rng.normal(0, 0.07, days))))
    x_tr, y_tr, x_te, y_te = _windows(series, 28, 7, 0.2)
    features = tuple(f"units_t-{k}" for k in range(28, 0, -1))
    targets = tuple(f"units_t+{k}" for k in range(1, 8))
    return Windows(x_tr, y_tr, x_te, y_te, features, targets)


def grid_load(rng: Rng, hours: int = 24 * 180) -> Windows:
    h = np.arange(hours)
    hod, dow = h % 24, (h // 24) % 7
    daily = 0.75 + 0.18 * np.exp(-((hod - 9) ** 2) / 8) + 0.28 * np.exp(-((hod - 19) ** 2) / 6)
    weekly = np.where(dow >= 5, 0.88, 1.0)
    weather = np.zeros(hours)
    for t in range(1, hours):
        weather[t] = 0.995 * weather[t - 1] + rng.normal(0, 0.4)
    temperature = 8 + 10 * np.sin(2 * np.pi * (h / 24 - 100) / 365) + weather
    heating = 9 * np.maximum(15 - temperature, 0)
    load = 900 * daily * weekly + heating + rng.normal(0, 12, hours)
    cal = np.column_stack(
        [np.sin(2 * np.pi * hod / 24), np.cos(2 * np.pi * hod / 24), (dow >= 5).astype(float)]
    )
    x_tr, y_tr, x_te, y_te = _windows([np.round(load, 1)], 24, 1, 0.2, extra=[np.round(cal, 4)])
    features = (*(f"load_mw_t-{k}" for k in range(24, 0, -1)), "hour_sin", "hour_cos", "is_weekend")
    return Windows(x_tr, y_tr, x_te, y_te, features, ("load_mw_t+1",))


def site_traffic(rng: Rng, n_sites: int = 6, days: int = 540) -> Windows:
    d = np.arange(days)
    series = []
    for _ in range(n_sites):
        base = rng.uniform(2000, 40000)
        weekly = np.array([1.05, 1.1, 1.08, 1.04, 0.98, 0.82, 0.8])
        growth = np.exp(rng.uniform(0.0, 0.0012) * d)
        spikes = np.zeros(days)
        for start in rng.integers(0, days, 6):
            spikes[start:] += rng.uniform(0.5, 3.0) * np.exp(
                -(d[start:] - start) / rng.uniform(1.5, 4)
            )
        views = base * weekly[d % 7] * growth * (1 + spikes) * np.exp(rng.normal(0, 0.06, days))
        series.append(np.round(views))
    x_tr, y_tr, x_te, y_te = _windows(series, 14, 1, 0.2)
    features = tuple(f"pageviews_t-{k}" for k in range(14, 0, -1))
    return Windows(x_tr, y_tr, x_te, y_te, features, ("pageviews_t+1",))
