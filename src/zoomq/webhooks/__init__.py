"""Signed webhooks (Standard Webhooks): the SSRF guard on their addresses, and their signatures."""
