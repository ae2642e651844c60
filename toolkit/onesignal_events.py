"""Catalog of the OneSignal message events that arrive in Mixpanel.

OneSignal forwards messaging interactions to Mixpanel under two naming schemes: Mixpanel's own
``$``-prefixed messaging names (``$campaign_delivery``, ``$app_open``, ...) and per-channel display names
("Message Sent", "App Opened from Push", "Email Bounced", ...). Some display names are shared by several
channels: "Message Sent" is a push send *and* an in-app impression, "Message Received" is a push or SMS
delivery, "Message Opened" is an email open *and* an in-app click. So the catalog has one entry per
event *name*, listing every channel that uses it.

Each name is classified with the seed's rule (Mixpanel's OneSignal page): **delivery** events say that a
message went (or failed to go) somewhere - sent, received, bounced, failed, reported as spam, suppressed,
unsubscribed, undelivered - and do not make a user count toward MTU; **engagement** events say that the
person did something with it - opened, clicked, app opened from push - and do count.

An in-app impression arrives as "Message Sent", so it is classified with the name: delivery. Channel
granularity is not recoverable from the name alone, and the name is all the MTU rule can see.

``STRICT_EXEMPT`` is the literal list printed on the OneSignal integration page, which also exempts the
engagement events ``$campaign_open`` and ``$app_open``; offer it as the stricter option.

Pure data, standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

DELIVERY_KIND = "delivery"
ENGAGEMENT_KIND = "engagement"

PUSH, EMAIL, SMS, IN_APP = "push", "email", "sms", "in_app"
CHANNELS = (PUSH, EMAIL, SMS, IN_APP)


@dataclass(frozen=True)
class MessageEvent:
    """One OneSignal event name as it appears in Mixpanel."""

    name: str
    channels: tuple[str, ...]
    kind: str  # "delivery" or "engagement"
    meaning: str
    equivalent: str | None = None  # for a display name, the Mixpanel $-name with the same meaning

    @property
    def is_dollar_name(self) -> bool:
        return self.name.startswith("$")

    @property
    def counts_toward_mtu(self) -> bool:
        """Under the seed's rule (the default): only engagement events count."""
        return self.kind == ENGAGEMENT_KIND


_D, _E = DELIVERY_KIND, ENGAGEMENT_KIND

EVENTS: tuple[MessageEvent, ...] = (
    # Mixpanel's $-names for messaging events.
    MessageEvent("$campaign_delivery", (PUSH, EMAIL, SMS, IN_APP), _D, "a message was sent to a subscription"),
    MessageEvent("$campaign_received", (PUSH, SMS), _D, "a message was delivered to the device"),
    MessageEvent("$campaign_bounced", (EMAIL,), _D, "an email bounced"),
    MessageEvent("$campaign_marked_spam", (EMAIL,), _D, "the recipient reported an email as spam"),
    MessageEvent("$message_suppressed", (EMAIL,), _D, "an email was not sent: the address is suppressed"),
    MessageEvent("$unsubscribe", (PUSH, EMAIL, SMS), _D, "the subscription unsubscribed from messages"),
    MessageEvent("$campaign_open", (EMAIL, IN_APP), _E, "the recipient opened the message"),
    MessageEvent("$app_open", (PUSH,), _E, "the app was opened by tapping a push notification"),
    # OneSignal's display names, per channel.
    MessageEvent("Message Sent", (PUSH, IN_APP), _D,
                 "push: the notification was sent; in-app: the message was shown (impression)",
                 "$campaign_delivery"),
    MessageEvent("Message Received", (PUSH, SMS), _D,
                 "push: the notification reached the device; SMS: the text was delivered",
                 "$campaign_received"),
    MessageEvent("Push Failed", (PUSH,), _D, "the push could not be sent to the subscription"),
    MessageEvent("Push Unsubscribed", (PUSH,), _D, "the push subscription unsubscribed", "$unsubscribe"),
    MessageEvent("Email Bounced", (EMAIL,), _D, "the email bounced", "$campaign_bounced"),
    MessageEvent("Reported as Spam", (EMAIL,), _D, "the recipient reported the email as spam",
                 "$campaign_marked_spam"),
    MessageEvent("Email Failed", (EMAIL,), _D, "the email could not be sent"),
    MessageEvent("Email Suppressed", (EMAIL,), _D, "the email was not sent: the address is suppressed",
                 "$message_suppressed"),
    MessageEvent("Email Unsubscribed", (EMAIL,), _D, "the email subscription unsubscribed", "$unsubscribe"),
    MessageEvent("SMS Failed", (SMS,), _D, "the text could not be sent"),
    MessageEvent("SMS Undelivered", (SMS,), _D, "the text was sent but the carrier did not deliver it"),
    MessageEvent("Message Opened", (EMAIL, IN_APP), _E,
                 "email: the recipient opened the email; in-app: the recipient clicked the message",
                 "$campaign_open"),
    MessageEvent("App Opened from Push", (PUSH,), _E, "the recipient tapped the push and the app opened",
                 "$app_open"),
)

BY_NAME: Mapping[str, MessageEvent] = MappingProxyType({e.name: e for e in EVENTS})
NAMES: frozenset[str] = frozenset(BY_NAME)
DELIVERY: frozenset[str] = frozenset(e.name for e in EVENTS if e.kind == DELIVERY_KIND)
ENGAGEMENT: frozenset[str] = frozenset(e.name for e in EVENTS if e.kind == ENGAGEMENT_KIND)
DOLLAR_NAMES: frozenset[str] = frozenset(e.name for e in EVENTS if e.is_dollar_name)
DISPLAY_NAMES: frozenset[str] = NAMES - DOLLAR_NAMES

# The list printed on the OneSignal integration page (stricter: also exempts two engagement events).
STRICT_EXEMPT: frozenset[str] = frozenset({"$app_open", "$campaign_delivery", "$campaign_received",
                                           "$campaign_open"})


def get(name: str) -> MessageEvent | None:
    """The catalog entry for an event name (exact, case-sensitive match), or None."""
    return BY_NAME.get(name)


def kind_of(name: str) -> str | None:
    """"delivery", "engagement", or None when the name is not a OneSignal message event."""
    entry = BY_NAME.get(name)
    return entry.kind if entry is not None else None


def is_onesignal_event(name: str) -> bool:
    return name in BY_NAME


def names_for_channel(channel: str) -> tuple[str, ...]:
    """Every catalog name a channel can emit, in catalog order."""
    return tuple(e.name for e in EVENTS if channel in e.channels)


assert DELIVERY.isdisjoint(ENGAGEMENT) and DELIVERY | ENGAGEMENT == NAMES
assert all(e.equivalent is None or e.equivalent in DOLLAR_NAMES for e in EVENTS)
