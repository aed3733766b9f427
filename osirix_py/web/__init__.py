"""HTTP side: health endpoint now; REST, DICOMweb, WADO-URI and the web viewer later."""
