"""Campaigns: enrollment, durable runs over pending_steps, replay and the scheduler."""
