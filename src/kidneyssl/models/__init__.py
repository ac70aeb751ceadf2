"""kidneyssl.models"""
