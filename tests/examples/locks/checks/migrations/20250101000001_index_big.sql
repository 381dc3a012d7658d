-- a plain index build: SHARE on big (writes wait) for as long as it takes
CREATE INDEX big_v ON big (v);
