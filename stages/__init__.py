"""Thin DVC stage entry points: parse, load params, call one library function, write declared outputs."""
