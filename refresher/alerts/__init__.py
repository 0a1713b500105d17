"""Alarms (policy, channels, delivery) and token hooks."""

from refresher.alerts.channels import AppriseChannel, Channel, WebhookChannel, build_channels, channel_problems
from refresher.alerts.dispatcher import DeliveryError, Dispatcher
from refresher.alerts.events import AlarmCause, AlarmMessage, RefreshEvent
from refresher.alerts.hooks import HookDispatcher
from refresher.alerts.policy import AlertPolicy
from refresher.alerts.signing import verify_signature

__all__ = [
    "AlarmCause",
    "AlarmMessage",
    "AlertPolicy",
    "AppriseChannel",
    "Channel",
    "DeliveryError",
    "Dispatcher",
    "HookDispatcher",
    "RefreshEvent",
    "WebhookChannel",
    "build_channels",
    "channel_problems",
    "verify_signature",
]
