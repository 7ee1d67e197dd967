"""Tests of encoderfile.runtime: what the frozen artifact runs."""
