"""kidneyssl.reporting"""
