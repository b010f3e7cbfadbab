"""Tests of trainer.handlers and the rules and store they are built on."""
