"""Where trigger messages go: an SNS topic (sns.py) and a signed HTTP webhook (webhook.py); the Slack channel
sender lives with the Slack front (bot/slack/agent_health.py). Each is a ``TriggerSender`` of
engine/runtime/triggers.py."""
