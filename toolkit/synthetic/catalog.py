"""What the synthetic data talks about: names, places, event names, the properties of each product event,
the OneSignal id kinds and profile operations. Values used per event are serialized to JSON fragments here,
once, so that an event line is assembled from strings (see events.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from toolkit import onesignal_events as osev
from toolkit.synthetic.values import encode, pick, weighted

UPDATE_OPS = ("$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete")
# How a profile's $onesignal_user_id looks. "unusable_*" values can never match a OneSignal user;
# "duplicate" repeats the id of an earlier profile.
ONESIGNAL_ID_KINDS = ("external_uid", "external_ext", "subscription", "missing", "unusable_number",
                      "unusable_blank", "unusable_long", "duplicate")
USABLE_KINDS = frozenset({"external_uid", "external_ext", "subscription"})
ONESIGNAL_KIND_TABLE = weighted([("external_uid", 80), ("external_ext", 28), ("subscription", 44), ("missing", 36),
                                 ("unusable_number", 2), ("unusable_blank", 2), ("unusable_long", 2),
                                 ("duplicate", 4)])
PERSONA_TABLE = weighted([("plain", 6), ("identify", 5), ("alias", 2), ("merge", 1), ("simplified", 6)])


class City(NamedTuple):
    name: str
    country: str
    language: str


class Platform(NamedTuple):
    name: str
    os: str  # $os
    lib: str  # mp_lib
    lib_version: str  # $lib_version
    device_type: str  # OneSignal's device_type


FIRST_NAMES = ["Emma", "Liam", "Zoë", "José", "Łukasz", "Søren", "Ana", "Chloé", "Mateo", "Aiko", "Noah", "Olivia",
               "Björn", "Fatima", "Ingrid", "Renée", "Yuki", "Omar", "Priya", "Lucas", "Amélie", "Nikolai", "Mei",
               "Kofi"]
LAST_NAMES = ["Smith", "Müller", "García", "Nguyen", "Kowalski", "O'Brien", "Rossi", "Dubois", "Tanaka", "Silva",
              "Johansson", "Novák", "Ivanova", "Haddad", "Kim", "Brown", "Martin", "López", "Jensen", "Ćosić"]
CITIES = [City("Paris", "FR", "fr"), City("Zürich", "CH", "de"), City("São Paulo", "BR", "pt"),
          City("Kraków", "PL", "pl"), City("東京", "JP", "ja"), City("New York", "US", "en"),
          City("Berlin", "DE", "de"), City("Montréal", "CA", "fr"), City("London", "GB", "en"),
          City("Madrid", "ES", "es"), City("Austin", "US", "en"), City("Bengaluru", "IN", "en")]
PLATFORM_TABLE = weighted([(Platform("web", "Windows", "web", "2.55.1", "Chrome"), 6),
                           (Platform("web", "Mac OS X", "web", "2.55.1", "Safari"), 3),
                           (Platform("ios", "iOS", "swift", "4.3.0", "iOS"), 6),
                           (Platform("android", "Android", "android", "7.5.2", "Android"), 5)])
PLANS = ["free", "free", "free", "starter", "starter", "pro", "pro", "enterprise"]
INTERESTS = ["sports", "music", "cooking", "travel", "tech", "fashion", "gaming", "books", "fitness",
             "photographie", "café ☕", "アニメ"]
PAGES = [("/", "Home"), ("/pricing", "Preise & Pläne"), ("/produits/été", "Collection d'été"),
         ("/blog/🚀-launch", "We \"launched\" 🚀"), ("/account", "Account"), ("/help", "Centre d’aide"),
         ("/products/42", "Widget 42"), ("/料金", "料金プラン")]
QUERIES = ["shoes", "red \"running\" shoes", "café crème", "C:\\temp\\file.txt", "日本語", "emoji 🎉",
           "<script>alert(1)</script>", "naïve résumé", "tab\tand\nnewline", "50% off"]
CATEGORIES = ["chaussures", "électronique", "livres", "jouets", "maison"]
FEATURES = ["export", "dark mode", "search filters", "sharing", "notifications", "réglages"]
METHODS = ["password", "google", "apple", "magic link"]
REFERRERS = ["google", "newsletter", "$direct", "ami·e"]
CONTACT_PREFERENCES = ["e-mail", "SMS", "aucune ✗"]


class Campaign(NamedTuple):
    name: str
    title: str
    contents: str


CAMPAIGNS = [Campaign("Rentrée 🎒 promo", "C'est la rentrée !", "−20 % sur tout"),
             Campaign("Welcome series #1", "Welcome aboard", "Here is how to get started"),
             Campaign("Cart reminder", "You left something behind", "Your cart misses you 🛒"),
             Campaign("¡Oferta flash!", "¡Solo hoy!", "Descuentos de \"verdad\""),
             Campaign("Ваш заказ", "Заказ отправлен", "Отследить посылку"),
             Campaign("Weekly digest", "Your week in review", "3 new features"),
             Campaign("Black Friday ⚡", "Starts now", "Up to 50% off"),
             Campaign("お知らせ", "新機能", "ダークモードが使えます")]

# OneSignal message events: every catalog name, the common ones more often.
ONESIGNAL_EVENTS = osev.EVENTS
ONESIGNAL_TABLE = weighted([(e, {"Message Sent": 18, "Message Received": 14, "$campaign_delivery": 10,
                                 "$campaign_received": 8, "Message Opened": 8, "App Opened from Push": 6,
                                 "$campaign_open": 5, "$app_open": 4}.get(e.name, 1)) for e in ONESIGNAL_EVENTS])
ONESIGNAL_DEVICE = {osev.EMAIL: "Email", osev.SMS: "SMS"}  # other channels: the user's device type

IDENTITY_EVENTS = ("$identify", "$create_alias", "$merge")
# Event names as JSON fragments.
NAME_JSON = {name: encode(name) for name in
             ["Sign Up", "Page View", "Search", "Add to Cart", "Purchase", "Login", "Video Played", "Feature Used",
              "Panier validé ✓", *IDENTITY_EVENTS] + [e.name for e in ONESIGNAL_EVENTS]}

_PAGE_PROPS = [f', "page": {encode(p)}, "page_title": {encode(t)}' for p, t in PAGES]
_QUERY_JSON = [encode(q) for q in QUERIES]
_CATEGORY_JSON = [encode(c) for c in CATEGORIES]
_PAID_PLAN_JSON = [encode(p) for p in ("starter", "pro", "pro", "enterprise")]
_METHOD_JSON = [encode(m) for m in METHODS]
_FEATURE_JSON = [encode(f) for f in FEATURES]
LOGIN_METHOD_PROPS = [f', "method": {m}' for m in _METHOD_JSON]  # of a Sign Up or a Login


# The properties each product event adds, as a JSON fragment (', "key": value, ...'), drawn from rng.

def _page_view(rng: random.Random) -> str:
    return pick(rng, _PAGE_PROPS)


def _search(rng: random.Random) -> str:
    return f', "query": {pick(rng, _QUERY_JSON)}, "results": {int(rng.random() * 40)}'


def _add_to_cart(rng: random.Random) -> str:
    r = rng.random
    return (f', "item_id": "sku-{int(r() * 500):04d}", "item_count": {1 + int(r() * 4)}, '
            f'"price": {3 + r() * 97:.2f}, "catégorie": {pick(rng, _CATEGORY_JSON)}')


def _purchase(rng: random.Random) -> str:
    r = rng.random
    return (f', "amount": {5 + r() * 195:.2f}, "currency": "EUR", "plan": {pick(rng, _PAID_PLAN_JSON)}, '
            f'"item_count": {1 + int(r() * 5)}')


def _login(rng: random.Random) -> str:
    return f', "method": {pick(rng, _METHOD_JSON)}'


def _video(rng: random.Random) -> str:
    r = rng.random
    return (f', "video_id": "v{int(r() * 300):03d}", "duration_s": {5 + r() * 600:.1f}, '
            f'"quality": "{"1080p" if r() < 0.6 else "720p"}"')


def _feature(rng: random.Random) -> str:
    return f', "feature": {pick(rng, _FEATURE_JSON)}, "is_first_use": {"true" if rng.random() < 0.2 else "false"}'


def _checkout(rng: random.Random) -> str:  # unicode in the event name and in property names
    return f', "étape": {1 + int(rng.random() * 3)}, "total_€": {10 + rng.random() * 90:.2f}'


class ProductEvent(NamedTuple):
    name: str  # JSON fragment
    properties: Callable[[random.Random], str]
    weight: int


PRODUCT_EVENTS = [ProductEvent(NAME_JSON["Page View"], _page_view, 36),
                  ProductEvent(NAME_JSON["Search"], _search, 9),
                  ProductEvent(NAME_JSON["Add to Cart"], _add_to_cart, 12),
                  ProductEvent(NAME_JSON["Purchase"], _purchase, 4),
                  ProductEvent(NAME_JSON["Login"], _login, 7),
                  ProductEvent(NAME_JSON["Video Played"], _video, 9),
                  ProductEvent(NAME_JSON["Feature Used"], _feature, 9),
                  ProductEvent(NAME_JSON["Panier validé ✓"], _checkout, 2)]
