"""Seed the gwtest database: a customer with credit, a key (with limits) and
a price for the fake model, straight into the accounts tables (the admin API
belongs to billing; these tests exercise the gateway).  Prints the key.
usage: seed.py NAME CREDIT_PICO [rpm] [concurrency] [tpm]"""
import hashlib
import hmac
import os
import secrets
import sys

import psycopg2


def main():
    name, credit = sys.argv[1], int(sys.argv[2])
    rpm = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    conc = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    tpm = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    secret = bytes.fromhex(os.environ["GW_KEY_SECRET"])
    key = "sk-" + secrets.token_hex(24)
    c = psycopg2.connect(os.environ["GW_PG"])
    c.autocommit = True
    cur = c.cursor()
    cur.execute("insert into customers(name) values (%s) returning id", (name,))
    cid = cur.fetchone()[0]
    if credit > 0:
        cur.execute("insert into ledger(customer_id, kind, amount_pico) values (%s, 'topup', %s)", (cid, credit))
    cur.execute("insert into api_keys(customer_id, key_hash, prefix, rpm, concurrency, tpm)"
                " values (%s,%s,%s,%s,%s,%s)",
                (cid, hmac.new(secret, key.encode(), hashlib.sha256).hexdigest(), key[:11], rpm, conc, tpm))
    cur.execute("select 1 from model_prices where model = %s", (os.environ["GW_MODEL"],))
    if not cur.fetchone():
        cur.execute("insert into model_prices(model, input_cache_miss, input_cache_hit, output, effective_from)"
                    " values (%s, 270000, 70000, 1100000, now() - interval '1 day')", (os.environ["GW_MODEL"],))
    print(key)


if __name__ == "__main__":
    main()
