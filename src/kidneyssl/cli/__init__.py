"""kidneyssl.cli"""
