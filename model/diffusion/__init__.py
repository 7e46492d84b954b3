"""Noise math: rectified flow, samplers (schedules read by the one streaming loop), guidance."""
