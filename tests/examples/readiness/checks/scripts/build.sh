#!/bin/sh
echo "5940 modules transformed"
