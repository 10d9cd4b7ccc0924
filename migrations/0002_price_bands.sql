-- 0002_price_bands.sql — time-of-day price bands (DeepSeek-style off-peak prices).
--
-- A model_prices row without a band (band_start/band_end NULL) is a base
-- price; a row with a band applies only while the UTC time of day is in
-- [band_start, band_end) (wrapping past midnight when band_start > band_end).
-- The price of a model at time t: among the rows effective at t and not older
-- than the latest base row, the latest band row containing t's time of day,
-- else that base row.  Setting a new base price therefore ends the bands set
-- before it.  tg_price(model, t) is that rule; admission uses it.

ALTER TABLE model_prices
    ADD COLUMN band_start time,
    ADD COLUMN band_end time,
    ADD CONSTRAINT model_prices_band CHECK ((band_start IS NULL) = (band_end IS NULL)
                                           AND (band_start IS NULL OR band_start <> band_end));

ALTER TABLE model_prices DROP CONSTRAINT model_prices_model_effective_from_key;
CREATE UNIQUE INDEX model_prices_unique ON model_prices (model, effective_from, coalesce(band_start, '00:00'::time), coalesce(band_end, '00:00'::time));

CREATE FUNCTION tg_in_band(t time, s time, e time) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN s IS NULL THEN true
                WHEN s < e THEN t >= s AND t < e
                ELSE t >= s OR t < e END
$$;

CREATE FUNCTION tg_price(m text, at timestamptz) RETURNS SETOF model_prices LANGUAGE sql STABLE AS $$
    SELECT p.* FROM model_prices p
    WHERE p.model = m AND p.effective_from <= at
      AND p.effective_from >= (SELECT max(b.effective_from) FROM model_prices b
                               WHERE b.model = m AND b.band_start IS NULL AND b.effective_from <= at)
      AND tg_in_band((at AT TIME ZONE 'UTC')::time, p.band_start, p.band_end)
    ORDER BY (p.band_start IS NOT NULL) DESC, p.effective_from DESC, p.id DESC
    LIMIT 1
$$;
