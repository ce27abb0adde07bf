// placeholder: the tokensparse codec tests land with the codec
