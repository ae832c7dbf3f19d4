"""The photo stage: find the X-ray film in a phone photo, straighten it, and judge the photo's quality."""
