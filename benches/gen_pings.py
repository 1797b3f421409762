#!/usr/bin/env python3
"""Writes the pipeline bench's feed (benches/pipeline.rs::feed, byte for byte) to a file, for whole-process runs:
    python3 benches/gen_pings.py pings.ndjson && throng replay pings.ndjson --print > /dev/null"""
import sys
M=(1<<64)-1
x=0x9e3779b97f4a7c15
def rnd():
    global x
    x^=(x<<13)&M; x^=x>>7; x^=(x<<17)&M
    return x
P=1_000_000; D=50_000; SPAN=600_000; T0=1_767_193_200_000
out=open(sys.argv[1] if len(sys.argv) > 1 else 'pings.ndjson', 'w')
buf=[]
for i in range(P):
    ts=T0+(i*SPAN)//P+rnd()%3000
    dev=rnd()%D
    lat=31.233+(rnd()%11_500)*1e-6
    lng=121.476+(rnd()%17_500)*1e-6
    buf.append('{"kind":"lbs","ts":%d,"device":"dev-%08x","lat":%.6f,"lng":%.6f,"accuracy_m":15,"source":"carrier-a"}\n'%(ts,dev,lat,lng))
out.write(''.join(buf))
